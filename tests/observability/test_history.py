"""The tracker's history on real PostgreSQL: each try of each task, each job's event log."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from opentelemetry import trace

from services.gateway.auth import User
from services.gateway.executions import history, queries
from services.gateway.executions.history import ExecutionStatus, Task
from services.gateway.tracker import project
from shared import metrics
from shared.events import (
    CompositeFinished,
    ExportProgress,
    ExportReady,
    FileProcessed,
    FileRetrying,
    JobFinished,
)
from shared.ids import EventId, UserId, new_event_id
from tests.gateway.support import downloaded, failed, progress, started, submit_job, user_id

if TYPE_CHECKING:
    import asyncpg
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.events import PipelineEvent
    from shared.ids import FileId, JobId


@pytest.fixture
async def owner(pool: asyncpg.Pool) -> UserId:
    return await user_id(pool, "alice")


@pytest.fixture
async def job(pool: asyncpg.Pool, owner: UserId) -> tuple[JobId, list[FileId]]:
    return await submit_job(pool, owner, files=2)


async def _record(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await history.record(connection, event)


async def _runs(pool: asyncpg.Pool, subject: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM executions WHERE subject_id = $1 ORDER BY id", subject)
    return [dict(row) for row in rows]


async def _log(pool: asyncpg.Pool, job_id: str) -> list[tuple[int, str]]:
    rows = await pool.fetch("SELECT id, type FROM job_events WHERE job_id = $1 ORDER BY id", job_id)
    return [(row["id"], row["type"]) for row in rows]


def retrying(job_id: JobId, file_id: FileId, attempt: int, error: str = "HTTP 503") -> FileRetrying:
    return FileRetrying(
        event_id=new_event_id(),
        job_id=job_id,
        at=time.time(),
        file_id=file_id,
        attempt=attempt,
        error=error,
        retry_in_s=0.5,
    )


def job_finished(job_id: JobId, status: str) -> JobFinished:
    return JobFinished(event_id=new_event_id(), job_id=job_id, at=time.time(), status=status)


async def test_each_try_of_a_retried_file_is_a_row(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]], owner: UserId
) -> None:
    job_id, (file_id, _) = job
    await _record(
        pool,
        started(job_id, file_id, attempt=1),
        retrying(job_id, file_id, 1, "HTTP 503 from the server"),
        started(job_id, file_id, attempt=2),
        downloaded(job_id, file_id),
    )
    runs = await _runs(pool, file_id)
    assert [(r["task"], r["attempt"], r["status"]) for r in runs] == [
        ("download", 1, "retried"),
        ("download", 2, "completed"),
    ]
    assert runs[0]["error"] == "HTTP 503 from the server"
    assert runs[1]["error"] is None
    for run in runs:
        assert str(run["job_id"]) == job_id
        assert str(run["user_id"]) == owner
        assert run["worker"] == "test"
        assert run["duration_s"] >= 0
        assert run["finished_at"] >= run["started_at"]


async def test_a_try_whose_worker_died_is_interrupted_by_the_next(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, (file_id, _) = job
    await _record(pool, started(job_id, file_id, attempt=1), started(job_id, file_id, attempt=2))
    runs = await _runs(pool, file_id)
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "interrupted"), (2, "running")]
    assert "stopped before reporting" in runs[0]["error"]


async def test_a_retry_reported_after_the_next_try_started_still_closes_its_own_try(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    # The tracker projects concurrently: try 2's start can land before try 1's retry report.
    job_id, (file_id, _) = job
    await _record(
        pool,
        started(job_id, file_id, attempt=1),
        started(job_id, file_id, attempt=2),
        retrying(job_id, file_id, 1, "HTTP 503 from the server"),
        downloaded(job_id, file_id),
    )
    runs = await _runs(pool, file_id)
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "retried"), (2, "completed")]
    assert runs[0]["error"] == "HTTP 503 from the server"


@pytest.mark.parametrize(
    "order",
    [
        pytest.param((1, 0, 2), id="retry-report-before-its-start"),
        pytest.param((0, 2, 1), id="next-start-before-the-retry-report"),
        pytest.param((2, 0, 1), id="next-start-before-the-first-start"),
        pytest.param((2, 1, 0), id="try-1-reversed-after-try-2-started"),
    ],
)
async def test_each_try_is_one_row_whatever_order_its_events_are_projected_in(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]], order: tuple[int, ...]
) -> None:
    # The tracker projects concurrently: a try's start and its end may land in any order,
    # and either may land after the next try's start.
    job_id, (file_id, _) = job
    first_tries = [
        started(job_id, file_id, attempt=1),
        retrying(job_id, file_id, 1, "HTTP 503 from the server"),
        started(job_id, file_id, attempt=2),
    ]
    await _record(pool, *(first_tries[index] for index in order), downloaded(job_id, file_id))
    runs = await _runs(pool, file_id)
    assert sorted((r["attempt"], r["status"]) for r in runs) == [(1, "retried"), (2, "completed")]
    for run in runs:
        assert run["worker"] == "test"
        assert run["finished_at"] >= run["started_at"]
    assert next(r for r in runs if r["attempt"] == 1)["error"] == "HTTP 503 from the server"


async def test_a_failure_ends_the_running_try_or_is_recorded_alone(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, (first, second) = job
    await _record(
        pool,
        started(job_id, first, attempt=1),
        failed(job_id, first, attempts=1),
        failed(job_id, second, attempts=3),  # never reported a start (a poison command)
    )
    [run] = await _runs(pool, first)
    assert (run["status"], run["attempt"]) == ("failed", 1)
    assert "404" in run["error"]
    [alone] = await _runs(pool, second)
    assert (alone["status"], alone["attempt"], alone["duration_s"]) == ("failed", 3, 0)


async def test_a_cancelled_job_cancels_what_still_runs(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, (first, second) = job
    await _record(
        pool,
        started(job_id, first),
        started(job_id, second),
        downloaded(job_id, second),
        job_finished(job_id, "cancelled"),
    )
    assert [r["status"] for r in await _runs(pool, first)] == ["cancelled"]
    assert [r["status"] for r in await _runs(pool, second)] == ["completed"]


async def test_a_replayed_event_changes_nothing(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, (file_id, _) = job
    start = started(job_id, file_id)
    done = downloaded(job_id, file_id)
    before = metrics.FILES_FINISHED.labels("completed")._value.get()
    await _record(pool, start, done, start, done)
    assert len(await _runs(pool, file_id)) == 1
    assert [kind for _, kind in await _log(pool, job_id)] == ["file.started", "file.downloaded"]
    assert metrics.FILES_FINISHED.labels("completed")._value.get() == before + 1


async def test_events_of_an_unknown_job_are_ignored(pool: asyncpg.Pool) -> None:
    ghost_job, ghost_file = str(uuid.uuid4()), str(uuid.uuid4())
    await _record(pool, started(ghost_job, ghost_file), downloaded(ghost_job, ghost_file))  # type: ignore[arg-type]
    assert await _log(pool, ghost_job) == []
    assert await _runs(pool, ghost_file) == []


async def test_the_log_keeps_one_progress_per_file_at_its_latest_place(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, (first, second) = job
    stale = progress(job_id, first, 5)
    await _record(
        pool,
        progress(job_id, first, 1),  # before its start was recorded: dropped
        started(job_id, first),
        progress(job_id, first, 10),
        started(job_id, second),
        progress(job_id, first, 20),
    )
    assert [kind for _, kind in await _log(pool, job_id)] == [
        "file.started",
        "file.started",
        "file.progress",
    ]
    payload = await pool.fetchval(
        "SELECT payload FROM job_events WHERE file_id = $1 AND type = 'file.progress'", first
    )
    assert payload["bytes_downloaded"] == 20
    await _record(pool, stale)  # older than what is there: ignored
    await _record(pool, downloaded(job_id, first), progress(job_id, first, 30))
    assert [kind for _, kind in await _log(pool, job_id)] == [
        "file.started",
        "file.started",
        "file.progress",
        "file.downloaded",
    ]


async def test_the_tracker_records_before_it_projects(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, (first, second) = job
    async with pool.acquire() as connection:
        for event in (
            started(job_id, first),
            downloaded(job_id, first),
            started(job_id, second),
            failed(job_id, second, attempts=1),
        ):
            await project(connection, event)
    log = await _log(pool, job_id)
    assert [kind for _, kind in log] == [
        "file.started",
        "file.downloaded",
        "file.started",
        "file.failed",
    ]
    assert [i for i, _ in log] == sorted(i for i, _ in log)
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "partial"


async def test_processing_and_composites_are_recorded_from_their_ends(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, (file_id, _) = job
    composite_id = str(uuid.uuid4())
    await _record(
        pool,
        FileProcessed(
            event_id=new_event_id(),
            job_id=job_id,
            at=time.time(),
            file_id=file_id,
            errors={"thumbnail": "not an image", "cog": "not a raster"},
        ),
        CompositeFinished(
            event_id=new_event_id(), job_id=job_id, at=time.time(), composite_id=composite_id
        ),
    )
    [process] = await _runs(pool, file_id)
    assert (process["task"], process["status"], process["attempt"]) == ("process", "failed", 1)
    assert process["error"] == "cog: not a raster; thumbnail: not an image"
    [composite] = await _runs(pool, composite_id)
    assert (composite["task"], composite["status"], composite["file_id"]) == (
        "composite",
        "completed",
        None,
    )


async def test_an_export_is_recorded_from_its_first_progress_to_its_end(
    pool: asyncpg.Pool, owner: UserId
) -> None:
    export_id = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO exports (id, user_id, format, include_metadata, file_count, total_bytes)"
        " VALUES ($1, $2, 'zip', true, 2, 100)",
        export_id,
        owner,
    )
    ready = ExportReady(
        event_id=EventId(new_event_id()),
        export_id=export_id,
        at=time.time() + 1,
        filepath="u/exports/x.zip",
        size=90,
        sha256="0" * 64,
        file_count=2,
    )
    progress_events = [
        ExportProgress(
            event_id=new_event_id(), export_id=export_id, at=time.time(), files_done=n, bytes_done=n
        )
        for n in (1, 2)
    ]
    await _record(pool, *progress_events, ready, ready)
    [run] = await _runs(pool, export_id)
    assert (run["task"], run["status"], str(run["user_id"])) == ("export", "completed", owner)
    assert run["duration_s"] > 0


async def test_a_jobs_end_links_to_each_files_end(
    pool: asyncpg.Pool,
    job: tuple[JobId, list[FileId]],
    tracer_provider: TracerProvider,
    spans: InMemorySpanExporter,
) -> None:
    job_id, (first, second) = job
    tracer = tracer_provider.get_tracer("test")
    ends = {}
    for file_id in (first, second):
        with tracer.start_as_current_span(f"end of {file_id}") as span:
            await _record(pool, started(job_id, file_id), downloaded(job_id, file_id))
            ends[file_id] = span.get_span_context()
    with tracer.start_as_current_span("job end"):
        await _record(pool, job_finished(job_id, "completed"))

    [job_end] = [s for s in spans.get_finished_spans() if s.name == "job end"]
    linked = {(link.context.trace_id, link.context.span_id) for link in job_end.links}
    assert linked == {(c.trace_id, c.span_id) for c in ends.values()}
    assert {link.attributes["downlink.file_id"] for link in job_end.links} == {first, second}
    assert job_end.attributes is not None
    assert job_end.attributes["downlink.event"] == "job.finished"
    assert job_end.attributes["downlink.job_id"] == job_id
    async with pool.acquire() as connection:
        [context] = await history.job_span_contexts(connection, [job_id])
    assert context.span_id == job_end.context.span_id


async def test_outside_a_span_nothing_is_linked(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    job_id, (first, _) = job
    assert not trace.get_current_span().is_recording()
    await _record(pool, started(job_id, first), job_finished(job_id, "failed"))
    trace_ids = await pool.fetch("SELECT trace_id FROM job_events WHERE job_id = $1", job_id)
    assert {row["trace_id"] for row in trace_ids} == {None}


async def test_a_user_lists_their_own_runs_and_an_admin_all(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]], owner: UserId
) -> None:
    job_id, (first, second) = job
    other_job, (other_file, _) = await submit_job(pool, await user_id(pool, "bob"), files=2)
    await _record(
        pool,
        started(job_id, first),
        retrying(job_id, first, 1),
        started(job_id, first, attempt=2),
        downloaded(job_id, first),
        started(job_id, second),
        started(other_job, other_file),
    )
    alice = User(id=owner, name="alice", is_admin=False)
    admin = User(id=UserId(str(uuid.uuid4())), name="root", is_admin=True)

    async def page(user: User, **filters: Any) -> queries.ExecutionPage:
        options: dict[str, Any] = {"job_id": None, "status": None, "task": None, "page": 1}
        return await queries.list_executions(pool, user, **(options | {"per_page": 20} | filters))

    mine = await page(alice)
    assert mine.total == 3
    assert [run.id for run in mine.executions] == sorted(
        (run.id for run in mine.executions), reverse=True
    )
    assert {run.job_id for run in mine.executions} == {job_id}
    assert (await page(admin)).total == 4
    assert (await page(admin, job_id=other_job)).total == 1
    assert (await page(alice, job_id=other_job)).total == 0
    retried = await page(alice, status=ExecutionStatus.RETRIED)
    assert [(r.attempt, r.error) for r in retried.executions] == [(1, "HTTP 503")]
    assert (await page(alice, task=Task.EXPORT)).total == 0
    second_page = await page(alice, per_page=2, page=2)
    assert (len(second_page.executions), second_page.total) == (1, 3)


async def test_a_fast_file_is_recorded_whole_from_its_completion_alone(
    pool: asyncpg.Pool, job: tuple[JobId, list[FileId]]
) -> None:
    # A file done within the progress interval sends no FileStarted: its start rides along.
    job_id, (file_id, _) = job
    done = msgspec.structs.replace(
        downloaded(job_id, file_id), started_at=time.time() - 2.5, attempt=2, worker="dl-7"
    )
    await project_events(pool, done)
    late_start = msgspec.structs.replace(
        started(job_id, file_id, attempt=2), at=done.started_at, worker="dl-7"
    )
    await project_events(pool, late_start)  # sent after all, and late: the same try

    [run] = await _runs(pool, file_id)
    assert (run["status"], run["attempt"], run["worker"]) == ("completed", 2, "dl-7")
    assert run["started_at"].timestamp() == pytest.approx(done.started_at)
    assert run["duration_s"] == pytest.approx(2.5, abs=0.01)
    file = await pool.fetchrow("SELECT started_at, attempts FROM files WHERE id = $1", file_id)
    assert file["started_at"].timestamp() == pytest.approx(done.started_at)
    assert file["attempts"] == 2


async def project_events(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)
