"""A job's life on the record: the saga's end rule (`settle_job`), cancellation's and a
timeout's end, and the lock every change of a job and its files takes first.

Lock order everywhere: the job row, then its files, so no two writers deadlock.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec

from services.gateway.exports.automatic import export_finished_job
from services.gateway.jobs.records import FileCounts
from services.gateway.outbox import add_to_outbox
from services.gateway.processing.queueing import open_work
from services.gateway.workflows.jobs import job_step_ended
from shared.events import ENCODER, JobFinished
from shared.ids import JobId, new_event_id
from shared.postgres import rows_affected
from shared.statuses import FINAL_JOB_STATUSES, JobStatus
from shared.streams import EVENTS_STREAM
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    from collections.abc import Collection

    import asyncpg

log = logging.getLogger(__name__)


async def lock_job(connection: asyncpg.Connection, job_id: JobId) -> JobStatus | None:
    """Lock the job row for the rest of the transaction; None when there is no such job."""
    status = await connection.fetchval("SELECT status FROM jobs WHERE id = $1 FOR UPDATE", job_id)
    return None if status is None else JobStatus(status)


async def lock_jobs(
    connection: asyncpg.Connection, job_ids: Collection[str]
) -> dict[JobId, JobStatus]:
    """Lock the rows of `job_ids` in id order (two trackers locking overlapping sets cannot
    deadlock) for the rest of the transaction; the status of each job on record."""
    if not job_ids:
        return {}
    rows = await connection.fetch(
        "SELECT id, status FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
        list(job_ids),
    )
    return {JobId(str(row["id"])): JobStatus(row["status"]) for row in rows}


async def mark_job_in_progress(connection: asyncpg.Connection, job_id: JobId) -> None:
    await mark_jobs_in_progress(connection, [job_id])


async def mark_jobs_in_progress(connection: asyncpg.Connection, job_ids: Collection[str]) -> None:
    await connection.execute(
        "UPDATE jobs SET status = 'in_progress', updated_at = now()"
        " WHERE id = ANY($1::uuid[]) AND status = 'pending'",
        list(job_ids),
    )


async def file_counts(connection: asyncpg.Connection, job_id: JobId) -> FileCounts:
    """The job's file totals from its row (kept by migration 0007's trigger), never a count."""
    row = await connection.fetchrow(
        "SELECT total_files, files_completed, files_failed, files_cancelled"
        " FROM jobs WHERE id = $1",
        job_id,
    )
    return FileCounts(
        total=row["total_files"],
        completed=row["files_completed"],
        failed=row["files_failed"],
        cancelled=row["files_cancelled"],
    )


async def queue_job_finished(
    connection: asyncpg.Connection,
    job_id: JobId,
    status: JobStatus,
    counts: FileCounts,
    *,
    headers: dict[str, str],
) -> None:
    """Queue the job's JobFinished event in the outbox, in the transaction that ended it."""
    finished = JobFinished(
        event_id=new_event_id(),
        job_id=job_id,
        at=time.time(),
        status=status,
        successful=counts.completed,
        failed=counts.failed + counts.cancelled,
    )
    await add_to_outbox(connection, EVENTS_STREAM, ENCODER.encode(finished), headers=headers)


async def settle_job(connection: asyncpg.Connection, job_id: JobId, status: JobStatus) -> None:
    """Finish the job when none of its files is open any more (the caller locked the job row).

    The one rule for a job's end (completed, partial or failed) and its JobFinished event:
    the tracker applies it after each file's end, the reconciler after a job timed out.
    """
    if status in FINAL_JOB_STATUSES:
        return  # cancelled stays cancelled
    counts = await file_counts(connection, job_id)
    # A job ends after its files, and after its processing.
    if counts.open or await open_work(connection, job_id):
        await mark_job_in_progress(connection, job_id)
        return
    if counts.completed == counts.total:
        final = JobStatus.COMPLETED
    elif counts.completed:
        final = JobStatus.PARTIAL
    else:
        final = JobStatus.FAILED
    await connection.execute(
        "UPDATE jobs SET status = $2, finished_at = now(), updated_at = now()"
        " WHERE id = $1 AND finished_at IS NULL",
        job_id,
        final,
    )
    await queue_job_finished(connection, job_id, final, counts, headers=trace_headers())
    await export_finished_job(connection, job_id, final)  # when the job asked for one
    await job_step_ended(connection, job_id, final)  # when it is a workflow's step
    log.info("job %s finished: %s (%d of %d stored)", job_id, final, counts.completed, counts.total)


async def mark_job_cancelled(
    connection: asyncpg.Connection, job_id: JobId, reason: str, *, headers: dict[str, str]
) -> None:
    """Mark the job (its row locked) and its unfinished files cancelled, queue its JobFinished
    event and end its workflow step, if it is one; downloaders are told after the commit."""
    await connection.execute(
        "UPDATE jobs SET status = 'cancelled', error = $2, finished_at = now(),"
        " updated_at = now() WHERE id = $1",
        job_id,
        reason,
    )
    await connection.execute(
        "UPDATE files SET status = 'cancelled', updated_at = now()"
        " WHERE job_id = $1 AND status IN ('pending', 'downloading')",
        job_id,
    )
    counts = await file_counts(connection, job_id)
    await queue_job_finished(connection, job_id, JobStatus.CANCELLED, counts, headers=headers)
    await job_step_ended(connection, job_id, JobStatus.CANCELLED)


async def cancel_open_jobs(
    connection: asyncpg.Connection,
    job_ids: Collection[str],
    reason: str,
    *,
    headers: dict[str, str],
) -> list[JobId]:
    """Lock the jobs in id order and cancel those still open (the caller's transaction); the
    ones it cancelled. Downloaders are told after the commit."""
    locked = await lock_jobs(connection, job_ids)
    cancelled = [job for job, status in locked.items() if status not in FINAL_JOB_STATUSES]
    for job in cancelled:
        await mark_job_cancelled(connection, job, reason, headers=headers)
    return cancelled


# --- timeouts (the reconciler) --------------------------------------------------------------


class TimedOutJob(msgspec.Struct, frozen=True, kw_only=True):
    job_id: JobId
    timeout_s: int


# Still unfinished and past its timeout, counted from its creation or its last re-drive.
_PAST_TIMEOUT = (
    "finished_at IS NULL AND status IN ('pending', 'in_progress')"
    " AND coalesce(reopened_at, created_at)"
    " < now() - make_interval(secs => coalesce(timeout_s, $1))"
)


async def timed_out_jobs(
    connection: asyncpg.Connection, *, default_timeout_s: float, limit: int
) -> list[TimedOutJob]:
    """Unfinished jobs older than their timeout (their own, else the default), oldest first."""
    rows = await connection.fetch(
        "SELECT id, coalesce(timeout_s, $1)::bigint AS timeout_s FROM jobs"
        f" WHERE {_PAST_TIMEOUT} ORDER BY created_at LIMIT $2",
        default_timeout_s,
        limit,
    )
    return [TimedOutJob(job_id=JobId(str(r["id"])), timeout_s=r["timeout_s"]) for r in rows]


async def time_out_job(
    connection: asyncpg.Connection, job: TimedOutJob, *, default_timeout_s: float
) -> int | None:
    """End a job past its timeout: its open files fail, then the end rule settles it.

    Returns how many files failed, or None when the job ended or was re-driven since it was
    read (checked again under its lock).
    """
    status = await connection.fetchval(
        f"SELECT status FROM jobs WHERE id = $2 AND {_PAST_TIMEOUT} FOR UPDATE",
        default_timeout_s,
        job.job_id,
    )
    if status is None:
        return None
    error = f"job timed out after {job.timeout_s} s"
    result = await connection.execute(
        "UPDATE files SET status = 'failed', error = $2, rate_bps = NULL, updated_at = now()"
        " WHERE job_id = $1 AND status IN ('pending', 'downloading')",
        job.job_id,
        error,
    )
    await connection.execute(
        "UPDATE jobs SET error = $2, updated_at = now() WHERE id = $1", job.job_id, error
    )
    await settle_job(connection, job.job_id, JobStatus(status))
    return rows_affected(result)
