"""Execution history and job event logs: what the tracker remembers of every task run and event.

The tracker records each batch of events it consumes (`record_wave`, a wave at a time) in the
transaction that projects it, so a job's log is complete by the time its JobFinished can exist.
Both tables survive restarts (Celery's Flower forgets on each): `executions` holds one row per
try of a task (download, process, composite, export); `job_events` (journal.py) holds each
job's events in order, their id being the SSE event id of GET /downloads/jobs/{id}/events
(executions/queries.py reads both). Everything here is idempotent: a replayed event changes
nothing, since its id is already in `job_events`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from services.gateway.executions import journal
from services.gateway.executions.tries import (
    End,
    Start,
    finish_tries,
    finish_try,
    insert_try,
    start_tries,
    started_at,
)
from shared import metrics
from shared.events import (
    CompositeFinished,
    Event,
    ExportFailed,
    ExportProgress,
    ExportReady,
    FileDownloaded,
    FileFailed,
    FileProcessed,
    FileRetrying,
    FileStarted,
    JobFinished,
)
from shared.telemetry import MAX_LINKS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import asyncpg

    from shared.events import PipelineEvent


class Task(StrEnum):
    """The kinds of work the history records."""

    DOWNLOAD = "download"  # one file fetched by a downloader
    PROCESS = "process"  # one file's processing steps
    COMPOSITE = "composite"  # one job-level band composite
    EXPORT = "export"  # one archive
    TASK = "task"  # one run of a user-defined task (services/tasks)


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
    describe_span(event)
    async with connection.transaction():
        if job_id is not None:
            # As the tracker's batches do: the job's log is appended one transaction at a time.
            await connection.execute("SELECT FROM jobs WHERE id = $1 FOR UPDATE", job_id)
        recorded = await record_wave(connection, [event])
    count(recorded)


async def record_wave(
    connection: asyncpg.Connection,
    events: Sequence[PipelineEvent],
    *,
    spans: Mapping[str, trace.Span] | None = None,
) -> list[PipelineEvent]:
    """Record `events` in a few statements, the caller holding their jobs' rows locked.

    At most one event per subject (file, composite, export), and an event that touches all of
    its job (a JobFinished) alone among its job's: the tracker's waves. Returns the events
    added to their jobs' logs, for `count` once committed.

    Args:
        spans: the span that consumed each event, by its id (else the current span).
    """
    spans = spans or {}
    of_jobs = [e for e in events if isinstance(e, Event)]
    added: list[Any] = await journal.append(connection, of_jobs, spans) if of_jobs else []
    starts = [_start_of(e) for e in added if isinstance(e, FileStarted)]
    await start_tries(connection, Task.DOWNLOAD, starts)
    await finish_tries(connection, [end for e in added if (end := _end_of(e)) is not None])
    for event in added:
        if isinstance(event, JobFinished):
            await _job_finished(connection, event)
            span = spans.get(event.event_id) or trace.get_current_span()
            await _link_file_ends(connection, event.job_id, span)
    for event in events:
        if isinstance(event, ExportProgress | ExportReady | ExportFailed):
            await _record_export(connection, event)
    return added


def describe_span(event: PipelineEvent, span: trace.Span | None = None) -> None:
    """Name the tracker's span of this event (else the current one): what a trace view shows."""
    span = span or trace.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("downlink.event", journal.tag(event))
    for name in ("job_id", "file_id", "export_id", "composite_id", "task_id"):
        value = getattr(event, name, None)
        if value is not None:
            span.set_attribute(f"downlink.{name}", str(value))


def _start_of(event: FileStarted) -> Start:
    return Start(
        subject_id=event.file_id,
        job_id=event.job_id,
        file_id=event.file_id,
        attempt=event.attempt,
        at=event.at,
        worker=event.worker or None,
    )


def _end_of(event: PipelineEvent) -> End | None:
    """The try an event of a job ends, if any."""
    if isinstance(event, FileRetrying | FileDownloaded | FileFailed):
        return _download_end(event)
    if isinstance(event, FileProcessed):
        errors = "; ".join(f"{step}: {message}" for step, message in sorted(event.errors.items()))
        return End(
            task=Task.PROCESS,
            subject_id=event.file_id,
            job_id=event.job_id,
            file_id=event.file_id,
            status=ExecutionStatus.FAILED if errors else ExecutionStatus.COMPLETED,
            at=event.at,
            started_at=started_at(event, event.at),
            error=errors or None,
        )
    if isinstance(event, CompositeFinished):
        return End(
            task=Task.COMPOSITE,
            subject_id=event.composite_id,
            job_id=event.job_id,
            file_id=None,
            status=ExecutionStatus.FAILED if event.error else ExecutionStatus.COMPLETED,
            at=event.at,
            started_at=started_at(event, event.at),
            error=event.error,
        )
    return None


def _download_end(event: FileRetrying | FileDownloaded | FileFailed) -> End:
    attempt: int | None
    if isinstance(event, FileRetrying):
        status, error, attempt = ExecutionStatus.RETRIED, event.error, event.attempt
    elif isinstance(event, FileFailed):
        status, error, attempt = ExecutionStatus.FAILED, event.error, event.attempts
    else:
        # A completion names its try only when it reports the try alone (its start inline);
        # one that followed a FileStarted may come from a downloader that did not say.
        status, error = ExecutionStatus.COMPLETED, None
        attempt = event.attempt if event.started_at is not None else None
    return End(
        task=Task.DOWNLOAD,
        subject_id=event.file_id,
        job_id=event.job_id,
        file_id=event.file_id,
        status=status,
        at=event.at,
        started_at=started_at(event, event.at),
        error=error,
        attempt=attempt,
        worker=getattr(event, "worker", "") or None,
    )


async def _job_finished(connection: asyncpg.Connection, event: JobFinished) -> None:
    # Whatever still runs when its job ends was cut short: by a cancel, or a job timeout.
    cancelled = event.status == "cancelled"
    await connection.execute(
        "UPDATE executions SET status = $2, finished_at = to_timestamp($3),"
        " duration_s = greatest(0, $3 - extract(epoch FROM started_at)),"
        " error = coalesce(error, $4)"
        " WHERE job_id = $1 AND status = 'running'",
        event.job_id,
        ExecutionStatus.CANCELLED if cancelled else ExecutionStatus.INTERRUPTED,
        event.at,
        f"the job ended ({event.status}) while this ran",
    )


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
        End(
            task=Task.EXPORT,
            subject_id=event.export_id,
            job_id=job_id,
            file_id=None,
            user_id=user_id,
            status=ExecutionStatus.FAILED if failed else ExecutionStatus.COMPLETED,
            at=event.at,
            started_at=started_at(event, event.at),
            error=event.error if isinstance(event, ExportFailed) else None,
        ),
    )


async def _link_file_ends(connection: asyncpg.Connection, job_id: str, span: trace.Span) -> None:
    """Link the span of a job's end to the span that recorded each file's end (the fan-in)."""
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


def count(events: Sequence[PipelineEvent]) -> None:
    """Count recorded events in the metrics: after the commit, so an event retried after a
    rollback is counted once."""
    for event in events:
        if isinstance(event, FileDownloaded):
            metrics.FILES_FINISHED.labels("completed").inc()
            metrics.BYTES_DOWNLOADED.inc(event.size)
        elif isinstance(event, FileFailed):
            metrics.FILES_FINISHED.labels("failed").inc()
        elif isinstance(event, JobFinished):
            metrics.JOBS_FINISHED.labels(event.status).inc()


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)
