"""A batch's projection equals event-by-event projection, whatever the cuts, order and replays.

The same jobs are written to one database, copied to a second; one stream of events (several
jobs, tries that retry, fail, complete with or without a start, progress, late and duplicated
events) is projected one event at a time into the first and in random batches into the second,
and every table the tracker writes must come out the same.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from services.gateway.tracker import project, project_batch
from shared.events import (
    FileDownloaded,
    FileFailed,
    FileProgress,
    FileRetrying,
    FileStarted,
    JobFinished,
)
from shared.ids import EventId, new_event_id
from shared.postgres import open_pool
from tests.gateway.support import submit_job, user_id
from tests.support import postgres_server

if TYPE_CHECKING:
    from collections.abc import Iterator

    import asyncpg

    from shared.events import PipelineEvent
    from shared.ids import FileId, JobId

Batches = list[list["PipelineEvent"]]


def _try_events(
    rng: random.Random, job: JobId, file: FileId, attempt: int, last: bool, at: float
) -> list[PipelineEvent]:
    """One try of one file: fast (its completion alone) or started, progressing, ended."""
    ids = {"event_id": EventId(new_event_id()), "job_id": job, "file_id": file}
    outcome = "retry" if not last else rng.choice(["done", "done", "done", "failed"])
    if outcome == "done" and rng.random() < 0.5:
        fast = FileDownloaded(
            **ids, at=at + 1, filename="f.bin", filepath=f"u/{file}", size=10, sha256="0" * 64,
            started_at=at, attempt=attempt, worker="dl-1",
        )  # fmt: skip
        events: list[PipelineEvent] = [fast]
        if rng.random() < 0.3:  # a start sent after all, and late
            events.append(FileStarted(**_fresh(ids), at=at, attempt=attempt, worker="dl-1"))
        return events
    events = [FileStarted(**ids, at=at, attempt=attempt, worker="dl-1")]
    for n in range(rng.randint(0, 3)):
        events.append(
            FileProgress(
                **_fresh(ids),
                at=at + 0.1 * (n + 1),
                bytes_downloaded=3 * (n + 1),
                total_bytes=10,
                rate_bps=100.0 * (n + 1),
            )
        )
    end: PipelineEvent
    if outcome == "retry":
        end = FileRetrying(
            **_fresh(ids), at=at + 1, attempt=attempt, error="HTTP 503", retry_in_s=1
        )
    elif outcome == "failed":
        end = FileFailed(**_fresh(ids), at=at + 1, error="HTTP 404", attempts=attempt)
    else:
        end = FileDownloaded(
            **_fresh(ids), at=at + 1, filename="f.bin", filepath=f"u/{file}", size=10,
            sha256="0" * 64, attempt=attempt, worker="dl-1",
        )  # fmt: skip
    return [*events, end]


def _fresh(ids: dict[str, Any]) -> dict[str, Any]:
    return {**ids, "event_id": EventId(new_event_id())}


def _stream(rng: random.Random, jobs: list[tuple[JobId, list[FileId]]]) -> list[PipelineEvent]:
    """Each file's tries in order, the files of all jobs interleaved at random."""
    per_file: list[list[PipelineEvent]] = []
    base = time.time()
    for job_id, files in jobs:
        for file_id in files:
            tries = rng.randint(1, 3)
            events: list[PipelineEvent] = []
            for attempt in range(1, tries + 1):
                at = base + 10 * attempt + rng.random()
                events += _try_events(rng, job_id, file_id, attempt, attempt == tries, at)
            if rng.random() < 0.2:  # progress after the end
                events.append(
                    FileProgress(
                        event_id=new_event_id(),
                        job_id=job_id,
                        at=base + 100,
                        file_id=file_id,
                        bytes_downloaded=99,
                        total_bytes=10,
                        rate_bps=1.0,
                    )
                )
            per_file.append(events)
    stream: list[PipelineEvent] = []
    while per_file:
        events = rng.choice(per_file)
        stream.append(events.pop(0))
        if not events:
            per_file.remove(events)
    # A job's end (as settle wrote it, replayed here) cancels what still runs in the history.
    stream.append(JobFinished(event_id=new_event_id(), job_id=jobs[0][0], at=base + 200,
                              status="cancelled"))  # fmt: skip
    return stream


def cut(rng: random.Random, stream: list[PipelineEvent]) -> Batches:
    """Random cuts, each batch shuffled, some events duplicated, some batches replayed."""
    batches: Batches = []
    position = 0
    while position < len(stream):
        size = rng.randint(1, 40)
        batch = stream[position : position + size]
        position += size
        if rng.random() < 0.3:
            batch += rng.sample(batch, k=min(3, len(batch)))  # duplicates inside the batch
        rng.shuffle(batch)
        batches.append(batch)
        if rng.random() < 0.2:
            batches.append(list(rng.choice(batches)))  # a redelivered batch
    return batches


@pytest.fixture
def twin_database_urls(database_url: str, database_server_url: str) -> Iterator[list[str]]:
    """`database_url`, and a copy made by `copy()` once the test wrote its jobs to it."""
    urls = [database_url]
    yield urls
    for url in urls[1:]:
        postgres_server.drop_database(database_server_url, url.rsplit("/", 1)[-1])


async def snapshot(pool: asyncpg.Pool) -> dict[str, Any]:
    """What the tracker wrote, without what differs by construction (serial ids, now())."""
    queries = {
        "files": "SELECT * FROM files ORDER BY id",
        "jobs": "SELECT *, finished_at IS NULL AS open FROM jobs ORDER BY id",
        "job_events": "SELECT job_id, event_id, type, file_id, at, payload, trace_id, span_id"
        " FROM job_events ORDER BY event_id",
        # A file's log in order (waves may interleave different files' rows differently).
        "file_logs": "SELECT file_id, array_agg(type ORDER BY id) FROM job_events"
        " GROUP BY file_id ORDER BY file_id",
        "executions": "SELECT task, subject_id, job_id, file_id, user_id, worker, status, attempt,"
        " started_at, finished_at, round(duration_s::numeric, 6) AS duration_s, error"
        " FROM executions ORDER BY subject_id, attempt, status, started_at",
        "processed_events": "SELECT event_id FROM processed_events ORDER BY event_id",
        # Without what a follow-up's enqueue stamps with now() (its times, its command's ids).
        "tasks": "SELECT id, user_id, task, queue, args, status, priority, attempts,"
        " ended_attempt, progress, result, error, worker, started_at, finished_at, trace_id,"
        " parent_id, checkpoint, checkpoint_at FROM tasks ORDER BY id",
        "outbox": "SELECT stream, body FROM outbox ORDER BY stream, id",
    }
    ignored = {"updated_at", "recorded_at"}
    snapshot: dict[str, Any] = {}
    for name, query in queries.items():
        rows = await pool.fetch(query)
        snapshot[name] = [{k: v for k, v in dict(r).items() if k not in ignored} for r in rows]
    for row in snapshot["jobs"]:
        del row["finished_at"]  # now(); `open` says whether it is set
    for row in snapshot["outbox"]:
        body = msgspec.json.decode(row["body"])
        row["body"] = {k: v for k, v in body.items() if k not in ("event_id", "at")}
    # Jobs ending in one batch are settled in id order, not in the order they ended.
    snapshot["outbox"].sort(key=repr)
    return snapshot


def make_twin(twin_database_urls: list[str], database_server_url: str) -> None:
    """Copy the first database, as the test wrote it, to a second."""
    copy = postgres_server.unique_name("dl_twin_")
    twin_database_urls.append(
        postgres_server.create_database(
            database_server_url, copy, template=twin_database_urls[0].rsplit("/", 1)[-1]
        )
    )


async def assert_batches_project_as_one_by_one(
    twin_database_urls: list[str], batches: Batches
) -> dict[str, Any]:
    """Project `batches` event by event into the first twin and batch by batch into the
    second; after each batch every table must be the same on both. Returns the last state."""
    assert sum(len(b) for b in batches) > len(batches)  # batches of several events
    async with (
        open_pool(twin_database_urls[0]) as one_by_one,
        one_by_one.acquire() as each,
        open_pool(twin_database_urls[1]) as batched,
        batched.acquire() as whole,
    ):
        for number, batch in enumerate(batches):
            for event in batch:
                await project(each, event)
            await project_batch(whole, batch)
            # After each batch, not only at the end: a later event may mend what one broke.
            expected, actual = await snapshot(one_by_one), await snapshot(batched)
            for table in expected:
                assert actual[table] == expected[table], (
                    f"batch {number}",
                    table,
                    _differences(actual[table], expected[table]),
                )
    return expected


@pytest.mark.parametrize("seed", range(8))
async def test_batches_project_as_events_one_by_one(
    twin_database_urls: list[str], database_server_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    async with open_pool(twin_database_urls[0]) as pool:
        owner = await user_id(pool, "alice")
        jobs = [await submit_job(pool, owner, files=rng.randint(2, 8)) for _ in range(3)]
    make_twin(twin_database_urls, database_server_url)
    batches = cut(rng, _stream(rng, jobs))

    projected = await assert_batches_project_as_one_by_one(twin_database_urls, batches)

    assert projected["executions"]  # the stream did something


def _differences(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[Any]:
    """The first rows that differ, column by column, for a readable failure."""
    if len(actual) != len(expected):
        return [f"{len(actual)} rows, {len(expected)} expected"]
    return [
        {k: (a[k], e[k]) for k in e if a.get(k) != e[k]}
        for a, e in zip(actual, expected, strict=True)
        if a != e
    ][:3]
