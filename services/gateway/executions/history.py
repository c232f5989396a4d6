"""Execution history and job event logs: what the tracker remembers of every task run and event.

`record()` runs for each event the tracker consumes, before the event is projected, so a job's
log is complete by the time its JobFinished can exist. Both tables survive restarts (Celery's
Flower forgets on each): `executions` holds one row per try of a task (download, process,
composite, export); `job_events` holds each job's events in order, their id being the SSE event
id of GET /downloads/jobs/{id}/events (executions/queries.py reads both). Everything here is
idempotent: a replayed event changes
nothing, since its id is already in `job_events`.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import msgspec
from opentelemetry import trace

from services.gateway.executions.tries import finish_try, insert_try
from shared import metrics
from shared.events import (
    CompositeFinished,
    ExportFailed,
    ExportProgress,
    ExportReady,
    FileDownloaded,
    FileFailed,
    FileProcessed,
    FileProgress,
    FileRetrying,
    FileStarted,
    JobFinished,
)
from shared.telemetry import MAX_LINKS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg

    from shared.events import PipelineEvent


class Task(StrEnum):
    """The kinds of work the history records."""

    DOWNLOAD = "download"  # one file fetched by a downloader
    PROCESS = "process"  # one file's processing steps
    COMPOSITE = "composite"  # one job-level band composite
    EXPORT = "export"  # one archive


class ExecutionStatus(StrEnum):
    """How one try ended; only `running` is not final."""

    RUNNING = "running"  # started, no outcome reported yet
    COMPLETED = "completed"  # succeeded
    FAILED = "failed"  # failed for good (dead-lettered, or a permanent error)
    RETRIED = "retried"  # failed, and another try was scheduled
    INTERRUPTED = "interrupted"  # its worker vanished (a crash); another try took over
    CANCELLED = "cancelled"  # its job was cancelled while it ran


EXECUTION_STATUSES = tuple(ExecutionStatus)
# The events whose span a job's end links to: each file's last word.
_FILE_ENDS = ("file.downloaded", "file.failed")


# --- recording (the tracker) ----------------------------------------------------------------


async def record(connection: asyncpg.Connection, event: PipelineEvent) -> None:
    """Append `event` to its job's log and update the execution history; a replay is a no-op."""
    job_id: str | None = getattr(event, "job_id", None)
    _describe_span(event, job_id)
    if job_id is None:
        if isinstance(event, ExportProgress | ExportReady | ExportFailed):
            async with connection.transaction():
                await _record_export(connection, event)
        return
    async with connection.transaction():
        # One job's events are recorded one at a time, so the ids of its log are handed out in
        # commit order: a client reading "id > last" can never skip one committed late.
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(job_id))
        if not await _append(connection, job_id, event):
            return
        await _record_execution(connection, job_id, event)
        if isinstance(event, JobFinished):
            await _link_file_ends(connection, job_id)
    _count(event)


def _describe_span(event: PipelineEvent, job_id: str | None) -> None:
    # The tracker's span of this event: what a trace view shows for it.
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("downlink.event", _tag(event))
    for name in ("job_id", "file_id", "export_id", "composite_id"):
        value = job_id if name == "job_id" else getattr(event, name, None)
        if value is not None:
            span.set_attribute(f"downlink.{name}", str(value))


def _lock_key(job_id: str) -> int:
    # A signed 64-bit key of the job; collisions only serialise two jobs' recording.
    return int.from_bytes(
        hashlib.sha256(b"job-events:" + job_id.encode()).digest()[:8], "big", signed=True
    )


async def _append(connection: asyncpg.Connection, job_id: str, event: PipelineEvent) -> bool:
    """Add the event to the job's log; False for a replay, a stale progress or an unknown job."""
    span_context = trace.get_current_span().get_span_context()
    trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else None
    span_id = format(span_context.span_id, "016x") if span_context.is_valid else None
    file_id = getattr(event, "file_id", None)
    args = (
        job_id,
        event.event_id,
        _tag(event),
        file_id,
        event.at,
        msgspec.to_builtins(event),
        trace_id,
        span_id,
    )
    if isinstance(event, FileProgress):
        # One row per file, moved to a new id by each newer progress, and only while the file
        # is still being fetched: progress overtaken by the file's end would read as a rewind.
        inserted = await connection.fetchval(
            "INSERT INTO job_events (job_id, event_id, type, file_id, at, payload, trace_id,"
            " span_id) SELECT $1, $2, $3, $4, $5, $6, $7, $8"
            " WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $1)"
            " AND (SELECT e.type FROM job_events e WHERE e.file_id = $4"
            "      AND e.type IN ('file.started', 'file.retrying', 'file.downloaded',"
            "      'file.failed') ORDER BY e.id DESC LIMIT 1) = 'file.started'"
            " ON CONFLICT (file_id) WHERE type = 'file.progress' DO UPDATE SET"
            " id = nextval(pg_get_serial_sequence('job_events', 'id')),"
            " event_id = EXCLUDED.event_id, at = EXCLUDED.at, payload = EXCLUDED.payload,"
            " trace_id = EXCLUDED.trace_id, span_id = EXCLUDED.span_id, recorded_at = now()"
            " WHERE job_events.at <= EXCLUDED.at AND job_events.event_id <> EXCLUDED.event_id"
            " RETURNING true",
            *args,
        )
        return bool(inserted)
    inserted = await connection.fetchval(
        "INSERT INTO job_events (job_id, event_id, type, file_id, at, payload, trace_id, span_id)"
        " SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $1)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING true",
        *args,
    )
    return bool(inserted)


async def _record_execution(
    connection: asyncpg.Connection, job_id: str, event: PipelineEvent
) -> None:
    recorder = _EXECUTION_RECORDERS.get(type(event))
    if recorder is not None:
        await recorder(connection, job_id, event)


async def _download_started(
    connection: asyncpg.Connection, job_id: str, event: FileStarted
) -> None:
    # The tracker projects concurrently, so this try's end may be on record already (it is
    # completed with its start) and a later try may have started first.
    completed = await connection.fetchval(
        "UPDATE executions SET started_at = to_timestamp($3), worker = coalesce(worker, $4),"
        " duration_s = greatest(0, extract(epoch FROM finished_at) - $3)"
        " WHERE task = $1 AND subject_id = $2 AND attempt = $5 RETURNING true",
        Task.DOWNLOAD,
        event.file_id,
        event.at,
        event.worker or None,
        event.attempt,
    )
    if not completed:
        await insert_try(
            connection,
            task=Task.DOWNLOAD,
            subject_id=event.file_id,
            job_id=job_id,
            file_id=event.file_id,
            worker=event.worker or None,
            status=ExecutionStatus.RUNNING,
            attempt=event.attempt,
            started_at=event.at,
        )
    await _interrupt_overtaken_tries(connection, event.file_id)


async def _interrupt_overtaken_tries(connection: asyncpg.Connection, file_id: str) -> None:
    """A try still running when a later one started has ended, reported or not (a worker
    killed mid-file reports nothing; its message was reclaimed): it ended as the next began."""
    await connection.execute(
        "WITH overtaken AS (SELECT r.id, (SELECT min(l.started_at) FROM executions l"
        "   WHERE l.task = r.task AND l.subject_id = r.subject_id AND l.attempt > r.attempt)"
        "   AS next_start"
        "  FROM executions r WHERE r.task = $1 AND r.subject_id = $2 AND r.status = 'running')"
        " UPDATE executions e SET status = 'interrupted', finished_at = o.next_start,"
        " duration_s = greatest(0, extract(epoch FROM o.next_start - e.started_at)),"
        " error = coalesce(e.error, 'the worker stopped before reporting an outcome')"
        " FROM overtaken o WHERE e.id = o.id AND o.next_start IS NOT NULL",
        Task.DOWNLOAD,
        file_id,
    )


async def _download_retried(
    connection: asyncpg.Connection, job_id: str, event: FileRetrying
) -> None:
    await _finish_download(
        connection, job_id, event, ExecutionStatus.RETRIED, error=event.error, attempt=event.attempt
    )


async def _download_completed(
    connection: asyncpg.Connection, job_id: str, event: FileDownloaded
) -> None:
    await _finish_download(connection, job_id, event, ExecutionStatus.COMPLETED)


async def _download_failed(connection: asyncpg.Connection, job_id: str, event: FileFailed) -> None:
    await _finish_download(
        connection, job_id, event, ExecutionStatus.FAILED, error=event.error, attempt=event.attempts
    )


async def _finish_download(
    connection: asyncpg.Connection,
    job_id: str,
    event: FileRetrying | FileDownloaded | FileFailed,
    status: ExecutionStatus,
    *,
    error: str | None = None,
    attempt: int | None = None,
) -> None:
    await finish_try(
        connection,
        task=Task.DOWNLOAD,
        subject_id=event.file_id,
        job_id=job_id,
        file_id=event.file_id,
        status=status,
        at=event.at,
        error=error,
        attempt=attempt,
    )


async def _processed(connection: asyncpg.Connection, job_id: str, event: FileProcessed) -> None:
    errors = "; ".join(f"{step}: {message}" for step, message in sorted(event.errors.items()))
    await finish_try(
        connection,
        task=Task.PROCESS,
        subject_id=event.file_id,
        job_id=job_id,
        file_id=event.file_id,
        status=ExecutionStatus.FAILED if errors else ExecutionStatus.COMPLETED,
        at=event.at,
        error=errors or None,
        event=event,
    )


async def _composite_finished(
    connection: asyncpg.Connection, job_id: str, event: CompositeFinished
) -> None:
    await finish_try(
        connection,
        task=Task.COMPOSITE,
        subject_id=event.composite_id,
        job_id=job_id,
        file_id=None,
        status=ExecutionStatus.FAILED if event.error else ExecutionStatus.COMPLETED,
        at=event.at,
        error=event.error,
        event=event,
    )


async def _job_finished(connection: asyncpg.Connection, job_id: str, event: JobFinished) -> None:
    # Whatever still runs when its job ends was cut short: by a cancel, or a job timeout.
    cancelled = event.status == "cancelled"
    await connection.execute(
        "UPDATE executions SET status = $2, finished_at = to_timestamp($3),"
        " duration_s = greatest(0, $3 - extract(epoch FROM started_at)),"
        " error = coalesce(error, $4)"
        " WHERE job_id = $1 AND status = 'running'",
        job_id,
        ExecutionStatus.CANCELLED if cancelled else ExecutionStatus.INTERRUPTED,
        event.at,
        f"the job ended ({event.status}) while this ran",
    )


# What each event of a job tells the execution history; the rest tell it nothing.
_EXECUTION_RECORDERS: dict[type, Callable[[asyncpg.Connection, str, Any], Awaitable[None]]] = {
    FileStarted: _download_started,
    FileRetrying: _download_retried,
    FileDownloaded: _download_completed,
    FileFailed: _download_failed,
    FileProcessed: _processed,
    CompositeFinished: _composite_finished,
    JobFinished: _job_finished,
}


async def _record_export(
    connection: asyncpg.Connection, event: ExportProgress | ExportReady | ExportFailed
) -> None:
    owner = await connection.fetchrow(
        "SELECT user_id, job_id FROM exports WHERE id::text = $1", event.export_id
    )
    if owner is None:
        return
    user_id, job_id = str(owner["user_id"]), _text_or_none(owner["job_id"])
    if isinstance(event, ExportProgress):
        # The first progress is the first sign of a build; later ones change nothing here.
        exists = await connection.fetchval(
            "SELECT true FROM executions WHERE task = $1 AND subject_id = $2 LIMIT 1",
            Task.EXPORT,
            event.export_id,
        )
        if not exists:
            await insert_try(
                connection,
                task=Task.EXPORT,
                subject_id=event.export_id,
                job_id=job_id,
                file_id=None,
                user_id=user_id,
                status=ExecutionStatus.RUNNING,
                attempt=1,
                started_at=event.at,
            )
        return
    failed = isinstance(event, ExportFailed)
    await finish_try(
        connection,
        task=Task.EXPORT,
        subject_id=event.export_id,
        job_id=job_id,
        file_id=None,
        user_id=user_id,
        status=ExecutionStatus.FAILED if failed else ExecutionStatus.COMPLETED,
        at=event.at,
        error=event.error if isinstance(event, ExportFailed) else None,
        event=event,
    )


async def _link_file_ends(connection: asyncpg.Connection, job_id: str) -> None:
    """Link the span of a job's end to the span that recorded each file's end (the fan-in)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    rows = await connection.fetch(
        "SELECT DISTINCT ON (file_id) file_id, trace_id, span_id FROM job_events"
        " WHERE job_id = $1 AND type = ANY($2::text[]) AND trace_id IS NOT NULL"
        " ORDER BY file_id, id DESC LIMIT $3",
        job_id,
        list(_FILE_ENDS),
        MAX_LINKS,
    )
    for row in rows:
        span.add_link(
            _span_context(row["trace_id"], row["span_id"]),
            {"downlink.file_id": str(row["file_id"])},
        )


async def job_span_contexts(
    connection: asyncpg.Connection, job_ids: list[str]
) -> list[trace.SpanContext]:
    """The span that recorded each job's end, for work that fans in over jobs (an export of
    several jobs links to them with `shared.telemetry.link_header`)."""
    rows = await connection.fetch(
        "SELECT DISTINCT ON (job_id) trace_id, span_id FROM job_events"
        " WHERE job_id = ANY($1::uuid[]) AND type = 'job.finished' AND trace_id IS NOT NULL"
        " ORDER BY job_id, id DESC LIMIT $2",
        job_ids,
        MAX_LINKS,
    )
    return [_span_context(row["trace_id"], row["span_id"]) for row in rows]


def _span_context(trace_id: str, span_id: str) -> trace.SpanContext:
    return trace.SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )


def _count(event: PipelineEvent) -> None:
    # After the commit, so an event retried after a rollback is counted once.
    if isinstance(event, FileDownloaded):
        metrics.FILES_FINISHED.labels("completed").inc()
        metrics.BYTES_DOWNLOADED.inc(event.size)
    elif isinstance(event, FileFailed):
        metrics.FILES_FINISHED.labels("failed").inc()
    elif isinstance(event, JobFinished):
        metrics.JOBS_FINISHED.labels(event.status).inc()


def _tag(event: PipelineEvent) -> str:
    tag = type(event).__struct_config__.tag
    return str(tag)


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)
