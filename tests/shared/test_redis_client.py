"""The shared Redis client under more concurrent commands than it has connections."""

from __future__ import annotations

import asyncio

from shared.redis_client import open_redis

# What redis-py's default pool allowed before it raised MaxConnectionsError.
DEFAULT_LIMIT = 100


async def test_more_concurrent_commands_than_the_default_pool_allows_all_succeed(
    redis_url: str,
) -> None:
    # A task worker with --max-jobs 256 has this many commands in flight at once; redis-py's
    # default pool failed those past 100 with MaxConnectionsError.
    async with open_redis(redis_url) as redis:
        # A BLPOP on an empty list holds its connection for its timeout without holding the
        # server, so every command needs a connection of its own at the same time.
        answers = await asyncio.gather(
            *(redis.blpop(["downlink:test:empty"], timeout=0.2) for _ in range(3 * DEFAULT_LIMIT))
        )
    assert answers == [None] * (3 * DEFAULT_LIMIT)
