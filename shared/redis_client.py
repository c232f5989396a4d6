"""The Redis client every process shares."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis


@contextlib.asynccontextmanager
async def open_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on `redis_url`; bytes in and out, since stream frames are binary."""
    client = Redis.from_url(redis_url, health_check_interval=10, socket_keepalive=True)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()
