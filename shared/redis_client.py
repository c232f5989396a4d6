"""The Redis client every process shares."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from shared.pipelining import RoundTrips

_SCAN_COUNT = 200
# Connections one process may open. redis-py's default pool fails commands past 100 with
# MaxConnectionsError, which a task worker with 256 slots reaches; a blocking pool instead
# turns a leaked connection (a command cancelled mid-reply) into a stall, so the pool stays
# non-blocking with room for every slot.
MAX_CONNECTIONS = 10_000


@contextlib.asynccontextmanager
async def open_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on `redis_url`; bytes in and out, since stream frames are binary."""
    client = Redis.from_url(
        redis_url,
        max_connections=MAX_CONNECTIONS,
        health_check_interval=10,
        socket_keepalive=True,
    )
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


class KeyReads:
    """GETs of concurrent callers, sent together as one MGET per round trip.

    An idle reader sends at once; under load, the keys asked while one MGET is out go in the
    next (shared.pipelining.RoundTrips). Share one per process between the ports that read
    keys on a hot path, so their reads ride the same round trips.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._reads: RoundTrips[str, bytes | None] = RoundTrips(self._get_all)

    async def get(self, key: str) -> bytes | None:
        return await self._reads.submit(key)

    async def _get_all(self, keys: list[str]) -> list[bytes | None]:
        found = await self._redis.mget(keys)
        return [value.encode() if isinstance(value, str) else value for value in found]
