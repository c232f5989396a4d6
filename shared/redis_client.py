"""The Redis client every process shares."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

_SCAN_COUNT = 200


@contextlib.asynccontextmanager
async def open_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on `redis_url`; bytes in and out, since stream frames are binary."""
    client = Redis.from_url(redis_url, health_check_interval=10, socket_keepalive=True)
    try:
        await client.ping()
        yield client
    finally:
        await client.aclose()


async def hashes_under(redis: Redis, prefix: str) -> list[dict[bytes, bytes]]:
    """Every hash whose key starts with `prefix` (the worker and task-type registries), read in
    one pipeline after the scan; a key that expired in between reads as an empty hash."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=_SCAN_COUNT)]
    if not keys:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        hashes: list[dict[bytes, bytes]] = await pipe.execute()
    return hashes
