"""The downloader's Redis-backed ports: finished files, names taken in a job, cancelled jobs."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

import pytest

from services.downloader.state import CancelWatcher, RedisCompletions, RedisNames
from shared.errors import JobCancelled
from shared.events import FileDownloaded
from shared.ids import EventId, FileId, JobId
from shared.redis_client import KeyReads, open_redis
from shared.streams import cancelled_key, done_key, names_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

JOB = JobId("job-1")


async def test_completions_round_trip_with_a_ttl(redis: Redis) -> None:
    completions = RedisCompletions(redis, ttl_s=120)
    event = FileDownloaded(
        event_id=EventId("e-1"),
        job_id=JOB,
        at=1.0,
        file_id=FileId("f-1"),
        filename="a.tif",
        filepath="u/job-1/a.tif",
        size=3,
        sha256=hashlib.sha256(b"abc").hexdigest(),
    )
    assert await completions.get(FileId("f-1")) is None
    await completions.put(event)
    assert await completions.get(FileId("f-1")) == event
    assert 0 < await redis.ttl(done_key("f-1")) <= 120


async def test_a_name_is_claimed_once_per_job(redis: Redis) -> None:
    names = RedisNames(redis, ttl_s=60)
    assert await names.claim(JOB, "x.tif", FileId("f-1")) == "new"
    assert await names.claim(JOB, "x.tif", FileId("f-1")) == "ours"
    assert await names.claim(JOB, "x.tif", FileId("f-2")) == "taken"
    assert await names.claim(JobId("job-2"), "x.tif", FileId("f-2")) == "new"
    assert 0 < await redis.ttl(names_key(JOB)) <= 60


async def test_concurrent_claims_of_one_name_have_one_winner(redis: Redis) -> None:
    names = RedisNames(redis, ttl_s=60)
    answers = await asyncio.gather(
        *(names.claim(JOB, "same.tif", FileId(f"f-{n}")) for n in range(10))
    )
    assert sorted(answers) == ["new"] + ["taken"] * 9


async def test_claims_sent_together_each_get_their_own_answer(redis: Redis) -> None:
    names = RedisNames(redis, ttl_s=60)
    assert await names.claim(JOB, "kept.tif", FileId("f-0")) == "new"
    answers = await asyncio.gather(
        names.claim(JOB, "kept.tif", FileId("f-0")),
        names.claim(JOB, "kept.tif", FileId("f-1")),
        names.claim(JobId("job-2"), "kept.tif", FileId("f-1")),
        names.claim(JOB, "other.tif", FileId("f-2")),
        names.claim(JOB, "other.tif", FileId("f-2")),
    )
    assert answers == ["ours", "taken", "new", "new", "ours"]
    assert await redis.hgetall(names_key(JOB)) == {b"kept.tif": b"f-0", b"other.tif": b"f-2"}


async def test_is_cancelled_follows_the_redis_key(redis: Redis) -> None:
    watcher = CancelWatcher(redis)
    assert not await watcher.is_cancelled(JOB)
    await redis.set(cancelled_key(JOB), b"1")
    assert await watcher.is_cancelled(JOB)
    assert not await watcher.is_cancelled(JobId("job-2"))


async def test_a_local_cancel_is_remembered(redis: Redis) -> None:
    watcher = CancelWatcher(redis)
    watcher.cancel(JOB)
    assert await watcher.is_cancelled(JOB)


async def test_watch_turns_a_cancel_into_job_cancelled(redis: Redis) -> None:
    watcher = CancelWatcher(redis)
    entered = asyncio.Event()

    async def work() -> None:
        async with watcher.watch(JOB):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    await entered.wait()
    watcher.cancel(JOB)
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(task, 1)


async def test_a_shutdown_cancel_is_not_mistaken_for_a_job_cancel(redis: Redis) -> None:
    watcher = CancelWatcher(redis)
    entered = asyncio.Event()

    async def work() -> None:
        async with watcher.watch(JOB):
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_starts_read_cancel_flags_and_completions_together_not_one_command_each(
    own_redis_url: str,
) -> None:
    # A redis-server of this test's own: its command statistics count only these reads.
    async with open_redis(own_redis_url) as redis:
        reads = KeyReads(redis)
        watcher = CancelWatcher(redis, reads=reads)
        completions = RedisCompletions(redis, ttl_s=120, reads=reads)
        await redis.set(cancelled_key(JobId("job-3")), b"1")
        await redis.config_resetstat()

        async def start(n: int) -> tuple[bool, FileDownloaded | None]:
            job = JobId(f"job-{n % 4}")
            return await watcher.is_cancelled(job), await completions.get(FileId(f"f-{n}"))

        answers = await asyncio.gather(*(start(n) for n in range(64)))
        stats = await redis.info("commandstats")
    assert [cancelled for cancelled, _ in answers] == [n % 4 == 3 for n in range(64)]
    assert all(done is None for _, done in answers)
    # One EXISTS and one GET per start would be 128 round trips; the starts share a few MGETs.
    assert "cmdstat_exists" not in stats
    assert int(stats["cmdstat_mget"]["calls"]) <= 4
