"""A gateway SIGKILLed while its tracker projects a burst of events loses and doubles nothing."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

import pytest
import redis
from faststream.redis.parser import BinaryMessageFormatV1

from shared.consumer import DATA_FIELD
from shared.events import ENCODER, FileDownloaded, FileStarted
from shared.ids import EventId, FileId, JobId, new_event_id
from shared.postgres import open_pool
from shared.streams import EVENTS_STREAM
from tests.gateway.support import submit_job, user_id

if TYPE_CHECKING:
    import asyncpg

    from shared.events import PipelineEvent
    from tests.integration.conftest import PipelineFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILES = 3000


def _events(job_id: JobId, files: list[FileId]) -> list[PipelineEvent]:
    """Half the files start then complete; the other half complete alone, start inline."""
    events: list[PipelineEvent] = []
    now = time.time()
    for n, file_id in enumerate(files):
        common = {"job_id": job_id, "file_id": file_id}
        done = {
            **common,
            "event_id": EventId(new_event_id()),
            "at": now + 1,
            "filename": f"f{n}.bin",
            "filepath": f"u/{job_id}/f{n}.bin",
            "size": 1024,
            "sha256": hashlib.sha256(b"%d" % n).hexdigest(),
            "worker": "dl-1",
        }
        if n % 2:
            events.append(FileDownloaded(**done, started_at=now))
            continue
        events.append(FileStarted(**common, event_id=new_event_id(), at=now, worker="dl-1"))
        events.append(FileDownloaded(**done))
    return events


async def _publish(redis_url: str, events: list[PipelineEvent]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for event in events:
            frame = await BinaryMessageFormatV1.encode(
                message=ENCODER.encode(event), reply_to=None, headers={}, correlation_id="k"
            )
            pipe.xadd(EVENTS_STREAM, {DATA_FIELD: frame})
        pipe.execute()
    finally:
        client.close()


async def _processed(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM processed_events")
    return count


async def test_a_tracker_killed_mid_batch_loses_and_doubles_nothing(
    pipeline_factory: PipelineFactory, redis_url: str, database_url: str
) -> None:
    stack = pipeline_factory(DOWNLINK_CLAIM_IDLE="2", DOWNLINK_RECONCILE_INTERVAL="1")
    async with open_pool(database_url) as pool:
        job_id, files = await submit_job(pool, await user_id(pool, "alice"), files=FILES)
        events = _events(job_id, files)
        await _publish(redis_url, events)
        deadline = time.monotonic() + 60
        while await _processed(pool) < len(events) // 5:
            assert time.monotonic() < deadline, "the tracker projected nothing"
            time.sleep(0.005)
        assert stack.gateway is not None
        stack.gateway.kill()
        stack.gateway.wait(timeout=10)
        at_kill = await _processed(pool)
        assert at_kill < len(events), "killed too late: nothing was left to project"

        stack.start_gateway()
        deadline = time.monotonic() + 90
        while await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) != "completed":
            assert time.monotonic() < deadline, await pool.fetchrow(
                "SELECT * FROM jobs WHERE id = $1", job_id
            )
            time.sleep(0.1)

        # Its JobFinished comes back through the stream: the tracker logs its own output too.
        while not await pool.fetchval(
            "SELECT count(*) FROM job_events WHERE job_id = $1 AND type = 'job.finished'", job_id
        ):
            assert time.monotonic() < deadline, "no job.finished in the job's log"
            time.sleep(0.1)
        time.sleep(1)  # a second JobFinished, were there one, would show by now
        job = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        recount = await pool.fetchval(
            "SELECT count(*) FROM files WHERE job_id = $1 AND status = 'completed'", job_id
        )
        assert (job["files_completed"], recount, job["files_downloading"]) == (FILES, FILES, 0)
        assert job["bytes_downloaded"] == FILES * 1024
        assert await _processed(pool) == len(events)  # every event, once
        logged = await pool.fetch(
            "SELECT type, count(*) AS n, count(DISTINCT file_id) AS files FROM job_events"
            " WHERE job_id = $1 GROUP BY type ORDER BY type",
            job_id,
        )
        assert [(r["type"], r["n"], r["files"]) for r in logged] == [
            ("file.downloaded", FILES, FILES),
            ("file.started", FILES // 2, FILES // 2),
            ("job.finished", 1, 0),
        ]
        tries = await pool.fetch(
            "SELECT status, count(*) AS n, count(DISTINCT subject_id) AS files,"
            " count(*) FILTER (WHERE worker = 'dl-1' AND duration_s > 0) AS timed"
            " FROM executions WHERE job_id = $1 GROUP BY status",
            job_id,
        )
        assert [(r["status"], r["n"], r["files"], r["timed"]) for r in tries] == [
            ("completed", FILES, FILES, FILES)
        ]
    print(f"\ntracker killed after {at_kill} of {len(events)} events")
