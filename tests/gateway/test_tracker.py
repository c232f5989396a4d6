"""The tracker's projection: idempotent, forward-only, and the job's end with its JobFinished."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from redis.asyncio import Redis

from services.gateway.tracker import Tracker, project
from shared.broker import create_broker
from shared.events import EVENT_DECODER, JobFinished
from shared.ids import new_event_id
from shared.streams import DEAD_STREAM, EVENTS_STREAM
from tests.gateway.support import (
    downloaded,
    eventually,
    failed,
    progress,
    started,
    submit_job,
    user_id,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

    from shared.events import PipelineEvent
    from shared.ids import FileId, JobId
    from shared.settings import Settings


@pytest.fixture
async def job(pool: asyncpg.Pool) -> tuple[JobId, list[FileId]]:
    """A job of three pending files."""
    return await submit_job(pool, await user_id(pool, "alice"), files=3)


async def _apply(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)


async def _file(pool: asyncpg.Pool, file_id: FileId) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM files WHERE id = $1", file_id)
    return dict(row)


async def _job(pool: asyncpg.Pool, job_id: JobId) -> dict[str, Any]:
    return dict(await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id))


async def _finished_events(pool: asyncpg.Pool) -> list[JobFinished]:
    bodies = await pool.fetch(
        "SELECT body FROM outbox WHERE stream = $1 ORDER BY id", EVENTS_STREAM
    )
    events = [EVENT_DECODER.decode(row["body"]) for row in bodies]
    assert all(isinstance(e, JobFinished) for e in events)
    return events  # type: ignore[return-value]


async def test_started_moves_file_and_job_forward(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job

    await _apply(pool, started(job_id, files[0], attempt=2))

    file = await _file(pool, files[0])
    assert file["status"] == "downloading"
    assert file["attempts"] == 2
    assert file["started_at"] is not None
    assert (await _job(pool, job_id))["status"] == "in_progress"
    assert (await _file(pool, files[1]))["status"] == "pending"


async def test_progress_only_counts_forward_and_only_while_downloading(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job

    await _apply(pool, progress(job_id, files[0], 10, 100))  # before it started: ignored
    before_start = await _file(pool, files[0])
    await _apply(
        pool,
        started(job_id, files[0]),
        progress(job_id, files[0], 50, 100),
        progress(job_id, files[0], 30, 100),  # late and smaller: bytes never go back
    )
    during = await _file(pool, files[0])

    assert before_start["bytes_downloaded"] == 0
    assert during["bytes_downloaded"] == 50
    assert during["total_bytes"] == 100
    assert during["rate_bps"] == 1000.0
    # Progress is not tracked per event id: too frequent, and idempotent anyway.
    assert await pool.fetchval("SELECT count(*) FROM processed_events") == 1


async def test_downloaded_fills_in_the_file(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job
    event = downloaded(job_id, files[0], b"abc", name="a.tif", content_type="image/tiff")

    await _apply(pool, started(job_id, files[0]), progress(job_id, files[0], 1, 3), event)

    file = await _file(pool, files[0])
    assert file["status"] == "completed"
    assert file["filename"] == "a.tif"
    assert file["filepath"] == event.filepath
    assert file["size"] == 3
    assert file["bytes_downloaded"] == 3
    assert file["sha256"] == event.sha256
    assert file["content_type"] == "image/tiff"
    assert file["downloaded_at"] is not None
    assert file["error"] is None


async def test_replayed_and_out_of_order_events_change_nothing(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job
    done = downloaded(job_id, files[0], b"abc")
    gave_up = failed(job_id, files[1], attempts=3)
    await _apply(pool, started(job_id, files[0]), done, gave_up)
    snapshot = [await _file(pool, f) for f in files[:2]]
    events_before = await pool.fetchval("SELECT count(*) FROM processed_events")

    await _apply(
        pool,
        done,  # the same event again
        msgspec.structs.replace(done, size=999),  # a replay with the same id, changed
        downloaded(job_id, files[0], b"other bytes"),  # a second completion, new id
        progress(job_id, files[0], 10_000),  # progress after the end
        started(job_id, files[0], attempt=7),  # a start after the end
        started(job_id, files[1], attempt=9),  # a start after a failure
        downloaded(job_id, files[1], b"late"),  # bytes after a failure
        gave_up,
    )

    assert [await _file(pool, f) for f in files[:2]] == snapshot
    # Only the new event ids were recorded; replays were recognised by theirs.
    assert await pool.fetchval("SELECT count(*) FROM processed_events") == events_before + 4


async def test_a_replayed_start_is_recognised_by_its_id(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job
    first = started(job_id, files[0], attempt=1)
    await _apply(pool, first)
    await pool.execute("UPDATE files SET attempts = 0 WHERE id = $1", files[0])

    await _apply(pool, first)

    assert (await _file(pool, files[0]))["attempts"] == 0  # not applied a second time


async def test_job_completes_when_every_file_is_stored(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job

    for file_id in files[:2]:
        await _apply(pool, started(job_id, file_id), downloaded(job_id, file_id))
    still_running = await _job(pool, job_id)
    last = downloaded(job_id, files[2])
    await _apply(pool, last)
    await _apply(pool, last)  # the replay must not finish it twice

    assert still_running["status"] == "in_progress"
    assert still_running["finished_at"] is None
    ended = await _job(pool, job_id)
    assert ended["status"] == "completed"
    assert ended["finished_at"] is not None
    (finished,) = await _finished_events(pool)
    assert finished.job_id == job_id
    assert (finished.status, finished.successful, finished.failed) == ("completed", 3, 0)


async def test_job_is_partial_when_some_files_failed(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job

    await _apply(
        pool,
        downloaded(job_id, files[0]),
        failed(job_id, files[1]),
        downloaded(job_id, files[2]),
    )

    assert (await _job(pool, job_id))["status"] == "partial"
    (finished,) = await _finished_events(pool)
    assert (finished.status, finished.successful, finished.failed) == ("partial", 2, 1)


async def test_job_fails_when_no_file_was_stored(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job

    await _apply(pool, *(failed(job_id, f, attempts=3) for f in files))

    assert (await _job(pool, job_id))["status"] == "failed"
    assert {(await _file(pool, f))["attempts"] for f in files} == {3}
    (finished,) = await _finished_events(pool)
    assert (finished.status, finished.successful, finished.failed) == ("failed", 0, 3)


async def test_a_cancelled_job_stays_cancelled(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job
    await _apply(pool, started(job_id, files[0]))
    await pool.execute("UPDATE jobs SET status = 'cancelled', finished_at = now()")
    await pool.execute("UPDATE files SET status = 'cancelled' WHERE id <> $1", files[0])

    await _apply(pool, downloaded(job_id, files[0]), downloaded(job_id, files[1]))

    assert (await _job(pool, job_id))["status"] == "cancelled"
    assert (await _file(pool, files[0]))["status"] == "completed"  # it was still running
    assert (await _file(pool, files[1]))["status"] == "cancelled"
    assert await _finished_events(pool) == []


async def test_job_finished_and_unknown_jobs_are_ignored(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, files = job
    stranger = "00000000-0000-4000-8000-000000000000"

    await _apply(
        pool,
        JobFinished(event_id=new_event_id(), job_id=job_id, at=0.0, status="completed"),
        downloaded(stranger, files[0]),  # type: ignore[arg-type]
        downloaded(job_id, stranger),  # type: ignore[arg-type]
    )

    assert (await _job(pool, job_id))["status"] == "pending"
    assert (await _file(pool, files[0]))["status"] == "pending"


async def test_concurrent_last_files_finish_the_job_exactly_once(
    pool: asyncpg.Pool,
) -> None:
    job_id, files = await submit_job(pool, await user_id(pool, "alice"), files=8)

    async def apply(event: PipelineEvent) -> None:
        async with pool.acquire() as connection:
            await project(connection, event)

    await asyncio.gather(*(apply(downloaded(job_id, f)) for f in files))

    assert (await _job(pool, job_id))["status"] == "completed"
    (finished,) = await _finished_events(pool)
    assert finished.successful == 8


# --- the consumer around the projection, on real Redis ---------------------------------------


@pytest.fixture
async def tracker(pool: asyncpg.Pool, redis_url: str, settings: Settings) -> AsyncIterator[Tracker]:
    redis = Redis.from_url(redis_url)
    woken: list[bool] = []
    running = Tracker(pool, redis, settings, on_outbox_written=lambda: woken.append(True))
    task = asyncio.create_task(running.run())
    yield running
    running.stop()
    await asyncio.wait_for(task, 10)
    await redis.aclose()


async def test_tracker_projects_events_from_the_stream(
    pool: asyncpg.Pool,
    redis_url: str,
    tracker: Tracker,
    job: tuple[JobId, list[FileId]],
) -> None:
    job_id, files = job
    broker = create_broker(redis_url)
    await broker.connect()
    try:
        for file_id in files:
            await broker.publish(started(job_id, file_id), stream=EVENTS_STREAM)
            await broker.publish(downloaded(job_id, file_id), stream=EVENTS_STREAM)
        await broker.publish(b"not json at all", stream=EVENTS_STREAM)

        async def completed() -> bool:
            return bool((await _job(pool, job_id))["status"] == "completed")

        await eventually(completed, what="the job to complete")
        redis = Redis.from_url(redis_url)
        try:

            async def dead_lettered() -> bool:
                return int(await redis.xlen(DEAD_STREAM)) == 1

            await eventually(dead_lettered, what="the poison entry to be dead-lettered")
        finally:
            await redis.aclose()
    finally:
        await broker.stop()

    async def all_counted() -> bool:
        # The job's row commits a moment before the consumer counts the event as processed.
        return tracker.consumer.stats.processed == 6

    await eventually(all_counted, what="six events counted as processed")
    (finished,) = await _finished_events(pool)
    assert finished.successful == 3
