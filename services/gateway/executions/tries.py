"""The tries of the execution history: one row per try of a task, started and ended.

An end without a recorded start (the start was never reported: a fast file, or a service that
reports only ends) writes a finished row of its own; a replayed end changes nothing. Starts and
ends are recorded a list at a time, one statement each, for the tracker's batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

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


class End(msgspec.Struct, frozen=True, kw_only=True):
    """One reported end of a try.

    Attributes:
        attempt: the try it ends; None when the report does not say (its subject's running
            try ends, else a new row takes the next attempt).
        started_at: when the try began, for the row written when none is running (an end
            reported alone); the end itself when unknown.
    """

    task: Task
    subject_id: str
    job_id: str | None
    file_id: str | None
    status: ExecutionStatus
    at: float
    started_at: float
    error: str | None = None
    attempt: int | None = None
    worker: str | None = None
    user_id: str | None = None


class Start(msgspec.Struct, frozen=True, kw_only=True):
    """One reported start of a try (of a file's download)."""

    subject_id: str
    job_id: str
    file_id: str
    attempt: int
    at: float
    worker: str | None = None


# Each end closes its try: the running one (of its attempt, else the latest), or an
# 'interrupted' one of its attempt ('interrupted' is a guess made when a later try started
# first; the try's own report, arriving out of order, replaces it). With none of them on
# record, a finished row of its own, unless this very end is on record already (a replay:
# events without a job log, exports, have only this to tell one by).
_FINISH = """
WITH e AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[], $6::text[],
      $7::text[], $8::float8[], $9::float8[], $10::text[], $11::int[])
    AS e(task, subject_id, job_id, file_id, user_id, worker, status, at, started_at, error,
      attempt)
), target AS (
  SELECT e.*, (SELECT x.id FROM executions x WHERE x.task = e.task
      AND x.subject_id = e.subject_id
      AND ((x.status = 'running' AND (e.attempt IS NULL OR x.attempt = e.attempt))
        OR (e.attempt IS NOT NULL AND x.attempt = e.attempt AND x.status = 'interrupted'))
      ORDER BY x.id DESC LIMIT 1) AS run_id
  FROM e
), ended AS (
  UPDATE executions x SET status = t.status, finished_at = to_timestamp(t.at),
    duration_s = greatest(0, t.at - extract(epoch FROM x.started_at)), error = t.error,
    worker = coalesce(x.worker, t.worker)
  FROM target t WHERE x.id = t.run_id
)
INSERT INTO executions (task, subject_id, job_id, file_id, user_id, worker, status, attempt,
    started_at, finished_at, duration_s, error)
SELECT t.task, t.subject_id, t.job_id, t.file_id,
    coalesce(t.user_id, (SELECT j.user_id FROM jobs j WHERE j.id = t.job_id)), t.worker,
    t.status,
    coalesce(t.attempt, (SELECT coalesce(max(x.attempt), 0) + 1 FROM executions x
      WHERE x.task = t.task AND x.subject_id = t.subject_id)),
    to_timestamp(t.started_at), to_timestamp(t.at), greatest(0, t.at - t.started_at), t.error
FROM target t
WHERE t.run_id IS NULL AND NOT EXISTS (SELECT 1 FROM executions x WHERE x.task = t.task
    AND x.subject_id = t.subject_id AND x.status = t.status
    AND x.finished_at = to_timestamp(t.at))
"""


async def finish_tries(connection: asyncpg.Connection, ends: Sequence[End]) -> None:
    """Record `ends` (at most one per subject) in one statement; a replayed end changes nothing."""
    if not ends:
        return
    await connection.execute(
        _FINISH,
        [e.task for e in ends],
        [e.subject_id for e in ends],
        [e.job_id for e in ends],
        [e.file_id for e in ends],
        [e.user_id for e in ends],
        [e.worker for e in ends],
        [e.status for e in ends],
        [e.at for e in ends],
        [e.started_at for e in ends],
        [e.error for e in ends],
        [e.attempt for e in ends],
    )


async def finish_try(connection: asyncpg.Connection, end: End) -> None:
    await finish_tries(connection, [end])


# The tracker projects batches in parallel and a fast file reports its try from the end alone,
# so this try's end may be on record already (it is completed with its start) and a later try
# may have started first: one row per try whatever the order.
_START = """
WITH e AS (
  SELECT * FROM unnest($2::text[], $3::uuid[], $4::uuid[], $5::int[], $6::float8[], $7::text[])
    AS e(subject_id, job_id, file_id, attempt, at, worker)
), known AS (
  UPDATE executions x SET started_at = to_timestamp(e.at), worker = coalesce(x.worker, e.worker),
    duration_s = greatest(0, extract(epoch FROM x.finished_at) - e.at)
  FROM e WHERE x.task = $1 AND x.subject_id = e.subject_id AND x.attempt = e.attempt
  RETURNING x.subject_id
)
INSERT INTO executions (task, subject_id, job_id, file_id, user_id, worker, status, attempt,
    started_at)
SELECT $1, e.subject_id, e.job_id, e.file_id, (SELECT j.user_id FROM jobs j WHERE j.id = e.job_id),
    e.worker, 'running', e.attempt, to_timestamp(e.at)
FROM e WHERE e.subject_id NOT IN (SELECT subject_id FROM known)
"""

# A try still running when a later one started has ended, reported or not (a worker killed
# mid-file reports nothing; its message was reclaimed): it ended as the next began.
_INTERRUPT_OVERTAKEN = """
WITH overtaken AS (
  SELECT r.id, (SELECT min(l.started_at) FROM executions l
      WHERE l.task = r.task AND l.subject_id = r.subject_id AND l.attempt > r.attempt)
    AS next_start
  FROM executions r WHERE r.task = $1 AND r.subject_id = ANY($2::text[]) AND r.status = 'running'
)
UPDATE executions e SET status = 'interrupted', finished_at = o.next_start,
  duration_s = greatest(0, extract(epoch FROM o.next_start - e.started_at)),
  error = coalesce(e.error, 'the worker stopped before reporting an outcome')
FROM overtaken o WHERE e.id = o.id AND o.next_start IS NOT NULL
"""


async def start_tries(connection: asyncpg.Connection, task: Task, starts: Sequence[Start]) -> None:
    """Record `starts` (at most one per subject) in two statements."""
    if not starts:
        return
    await connection.execute(
        _START,
        task,
        [s.subject_id for s in starts],
        [s.job_id for s in starts],
        [s.file_id for s in starts],
        [s.attempt for s in starts],
        [s.at for s in starts],
        [s.worker for s in starts],
    )
    await interrupt_overtaken(connection, task, [s.subject_id for s in starts])


async def interrupt_overtaken(
    connection: asyncpg.Connection, task: Task, subject_ids: Sequence[str]
) -> None:
    """End as 'interrupted' the running tries of `subject_ids` that a later try overtook; run
    after any start or end is recorded, so the order the two arrive in does not matter."""
    await connection.execute(_INTERRUPT_OVERTAKEN, task, list(subject_ids))


def started_at(event: object, at: float) -> float:
    """When the try began, where the event says (`started_at` or `duration_s`), else `at`."""
    duration_s = getattr(event, "duration_s", None)
    began = getattr(event, "started_at", None)
    if not isinstance(began, float | int):
        began = at - duration_s if isinstance(duration_s, float | int) else at
    return float(began)
