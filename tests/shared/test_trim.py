"""Stream trimming on real Redis: what every group is done with goes, nothing else does."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from shared.streams import DEAD_STREAM
from shared.trim import cap_dead_letters, safe_min_id, trim_stream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

STREAM = "t:lane"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _fill(redis: Redis, count: int) -> list[bytes]:
    return [await redis.xadd(STREAM, {b"n": str(n).encode()}) for n in range(count)]


async def _read(redis: Redis, group: str, count: int) -> list[bytes]:
    response = await redis.xreadgroup(group, "c1", {STREAM: ">"}, count=count)
    return [entry_id for _stream, entries in response for entry_id, _fields in entries]


async def _ids(redis: Redis) -> list[bytes]:
    return [entry_id for entry_id, _fields in await redis.xrange(STREAM)]


async def test_acked_entries_go_and_pending_ones_stay(redis: Redis) -> None:
    ids = await _fill(redis, 5)
    await redis.xgroup_create(STREAM, "g", id="0")
    read = await _read(redis, "g", 3)
    await redis.xack(STREAM, "g", read[0], read[2])  # the second stays pending

    removed = await trim_stream(redis, STREAM)

    assert removed == 1
    assert await _ids(redis) == ids[1:]


async def test_unread_entries_stay_when_nothing_is_pending(redis: Redis) -> None:
    ids = await _fill(redis, 5)
    await redis.xgroup_create(STREAM, "g", id="0")
    await redis.xack(STREAM, "g", *await _read(redis, "g", 2))

    removed = await trim_stream(redis, STREAM)

    assert removed == 2
    assert await _ids(redis) == ids[2:]
    assert await trim_stream(redis, STREAM) == 0  # nothing more until the group moves on


async def test_a_group_that_read_nothing_keeps_everything(redis: Redis) -> None:
    ids = await _fill(redis, 3)
    await redis.xgroup_create(STREAM, "g", id="0")

    assert await trim_stream(redis, STREAM) == 0
    assert await _ids(redis) == ids


async def test_the_group_furthest_behind_decides(redis: Redis) -> None:
    ids = await _fill(redis, 6)
    await redis.xgroup_create(STREAM, "ahead", id="0")
    await redis.xgroup_create(STREAM, "behind", id="0")
    await redis.xack(STREAM, "ahead", *await _read(redis, "ahead", 6))
    behind = await _read(redis, "behind", 4)
    await redis.xack(STREAM, "behind", behind[0], behind[1], behind[3])  # the third pending

    removed = await trim_stream(redis, STREAM)

    assert removed == 2
    assert await _ids(redis) == ids[2:]
    # Once "behind" acknowledges, its cut is the first entry it has not read.
    await redis.xack(STREAM, "behind", behind[2])
    assert await trim_stream(redis, STREAM) == 2
    assert await _ids(redis) == ids[4:]


async def test_a_group_created_at_the_end_does_not_protect_older_entries(redis: Redis) -> None:
    ids = await _fill(redis, 3)
    await redis.xgroup_create(STREAM, "late", id="$")

    assert await trim_stream(redis, STREAM) == 3
    assert await _ids(redis) == []
    assert ids  # the stream itself stays, with its group
    assert await redis.xinfo_groups(STREAM)


async def test_an_empty_stream_with_a_group(redis: Redis) -> None:
    await redis.xgroup_create(STREAM, "g", id="0", mkstream=True)

    assert await trim_stream(redis, STREAM) == 0
    assert await redis.exists(STREAM)


async def test_a_stream_without_groups_is_left_alone(redis: Redis) -> None:
    ids = await _fill(redis, 3)

    assert await safe_min_id(redis, STREAM) is None
    assert await trim_stream(redis, STREAM) == 0
    assert await _ids(redis) == ids


async def test_a_missing_stream_is_not_an_error(redis: Redis) -> None:
    assert await trim_stream(redis, "t:nothing") == 0


async def test_dead_letters_are_capped_by_length(redis: Redis) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(1000):
            pipe.xadd(DEAD_STREAM, {b"letter": str(n).encode()})
        await pipe.execute()

    removed = await cap_dead_letters(redis, max_len=100)

    left = await redis.xlen(DEAD_STREAM)
    assert removed == 1000 - left
    # Approximate: whole radix-tree nodes go, so a little more than the cap may stay.
    assert 100 <= left < 300
    newest = await redis.xrevrange(DEAD_STREAM, count=1)
    assert newest[0][1][b"letter"] == b"999"
