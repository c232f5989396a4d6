"""The tries of the execution history: one row per try of a task, started and ended.

An end without a recorded start (the start was never reported, or the service reports only
ends) writes a finished row of its own; a replayed end changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

    from services.gateway.executions.history import ExecutionStatus, Task


async def insert_try(
    connection: asyncpg.Connection,
    *,
    task: Task,
    subject_id: str,
    job_id: str | None,
    file_id: str | None,
    status: ExecutionStatus,
    attempt: int,
    started_at: float,
    finished_at: float | None = None,
    duration_s: float | None = None,
    error: str | None = None,
    worker: str | None = None,
    user_id: str | None = None,
) -> None:
    await connection.execute(
        "INSERT INTO executions (task, subject_id, job_id, file_id, user_id, worker, status,"
        " attempt, started_at, finished_at, duration_s, error)"
        " SELECT $1, $2, $3::uuid, $4::uuid,"
        " coalesce($5::uuid, (SELECT user_id FROM jobs WHERE id = $3::uuid)),"
        " $6, $7, $8, to_timestamp($9), to_timestamp($10), $11, $12",
        task,
        subject_id,
        job_id,
        file_id,
        user_id,
        worker,
        status,
        attempt,
        started_at,
        finished_at,
        duration_s,
        error,
    )


async def finish_try(
    connection: asyncpg.Connection,
    *,
    task: Task,
    subject_id: str,
    job_id: str | None,
    file_id: str | None,
    status: ExecutionStatus,
    at: float,
    error: str | None = None,
    attempt: int | None = None,
    user_id: str | None = None,
    event: object = None,
) -> None:
    """End the subject's running try (of `attempt`, else its latest) with `status`.

    With no running try on record (its start was never reported, or the service reports only
    ends), a finished row is written instead, timed by the event where it says how long it
    took (`started_at` / `duration_s` attributes), else as an instant at `at`.
    """
    ended = await _end_running_try(
        connection, task, subject_id, status=status, at=at, error=error, attempt=attempt
    )
    if ended:
        return
    if await _finished_already(connection, task, subject_id, status=status, at=at):
        return  # events without a job log (exports) have only this to tell a replay by
    started_at = _started_at(event, at)
    if attempt is None:
        attempt = await connection.fetchval(
            "SELECT coalesce(max(attempt), 0) + 1 FROM executions"
            " WHERE task = $1 AND subject_id = $2",
            task,
            subject_id,
        )
    await insert_try(
        connection,
        task=task,
        subject_id=subject_id,
        job_id=job_id,
        file_id=file_id,
        user_id=user_id,
        status=status,
        attempt=attempt,
        started_at=started_at,
        finished_at=at,
        duration_s=max(0.0, at - started_at),
        error=error,
    )


async def _finished_already(
    connection: asyncpg.Connection,
    task: Task,
    subject_id: str,
    *,
    status: ExecutionStatus,
    at: float,
) -> bool:
    """Whether this very end is on record already (a replay)."""
    found = await connection.fetchval(
        "SELECT true FROM executions WHERE task = $1 AND subject_id = $2 AND status = $3"
        " AND finished_at = to_timestamp($4) LIMIT 1",
        task,
        subject_id,
        status,
        at,
    )
    return bool(found)


async def _end_running_try(
    connection: asyncpg.Connection,
    task: Task,
    subject_id: str,
    *,
    status: ExecutionStatus,
    at: float,
    error: str | None,
    attempt: int | None,
) -> bool:
    """End the subject's running try (of `attempt`, else its latest); False when none runs."""
    updated = await connection.fetchval(
        "UPDATE executions SET status = $3, finished_at = to_timestamp($4),"
        " duration_s = greatest(0, $4 - extract(epoch FROM started_at)), error = $5"
        " WHERE id = (SELECT id FROM executions WHERE task = $1 AND subject_id = $2"
        "   AND ((status = 'running' AND ($6::int IS NULL OR attempt = $6))"
        # 'interrupted' is a guess made when a later try started first; the try's own
        # report, arriving out of order, replaces it.
        "     OR ($6::int IS NOT NULL AND attempt = $6 AND status = 'interrupted'))"
        "   ORDER BY id DESC LIMIT 1)"
        " RETURNING true",
        task,
        subject_id,
        status,
        at,
        error,
        attempt,
    )
    return bool(updated)


def _started_at(event: object, at: float) -> float:
    """When the try began, where the event says (`started_at` or `duration_s`), else `at`."""
    duration_s = getattr(event, "duration_s", None)
    started_at = getattr(event, "started_at", None)
    if not isinstance(started_at, float | int):
        started_at = at - duration_s if isinstance(duration_s, float | int) else at
    return float(started_at)
