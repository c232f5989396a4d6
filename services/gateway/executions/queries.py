"""Reading the history: a page of task runs, a job's event log, whether a job ended."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import asyncpg

    from services.gateway.auth import User
    from services.gateway.executions.history import ExecutionStatus, Task
    from shared.ids import JobId


class Execution(msgspec.Struct, frozen=True, kw_only=True):
    """One try of one task; `subject_id` is what it worked on (a file, composite or export)."""

    id: int
    task: str
    status: str
    attempt: int
    job_id: str | None
    file_id: str | None
    subject_id: str
    worker: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    error: str | None


class ExecutionPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of the execution history, newest first, and how many runs there are in all."""

    executions: list[Execution]
    page: int
    per_page: int
    total: int


class JobEventRow(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event of a job: its SSE id, its type tag and the event as JSON."""

    id: int
    type: str
    payload: dict[str, Any]


_EXECUTION_COLUMNS = (
    "id, task, status, attempt, job_id::text, file_id::text, subject_id, worker, started_at,"
    " finished_at, duration_s, error"
)


async def list_executions(
    pool: asyncpg.Pool,
    user: User,
    *,
    job_id: JobId | None,
    status: ExecutionStatus | None,
    task: Task | None,
    page: int,
    per_page: int,
) -> ExecutionPage:
    """A page of the history, newest first: the caller's own runs, or every run for an admin."""
    owner = None if user.is_admin else user.id
    where = (
        " WHERE ($1::uuid IS NULL OR user_id = $1) AND ($2::uuid IS NULL OR job_id = $2)"
        " AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR task = $4)"
    )
    async with pool.acquire() as connection, connection.transaction(readonly=True):
        total = await connection.fetchval(
            f"SELECT count(*) FROM executions{where}", owner, job_id, status, task
        )
        rows = await connection.fetch(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions{where}"
            " ORDER BY id DESC LIMIT $5 OFFSET $6",
            owner,
            job_id,
            status,
            task,
            per_page,
            (page - 1) * per_page,
        )
    return ExecutionPage(
        executions=[Execution(**dict(row.items())) for row in rows],
        page=page,
        per_page=per_page,
        total=total,
    )


async def job_events(
    pool: asyncpg.Pool, job_id: JobId, *, after_id: int, limit: int = 500
) -> list[JobEventRow]:
    """The job's recorded events with an id above `after_id`, in order."""
    rows = await pool.fetch(
        "SELECT id, type, payload FROM job_events WHERE job_id = $1 AND id > $2"
        " ORDER BY id LIMIT $3",
        job_id,
        after_id,
        limit,
    )
    return [JobEventRow(id=row["id"], type=row["type"], payload=row["payload"]) for row in rows]


async def job_owned_by(pool: asyncpg.Pool, job_id: JobId, user: User) -> bool:
    """Whether the job exists and is `user`'s."""
    found = await pool.fetchval(
        "SELECT true FROM jobs WHERE id = $1 AND user_id = $2", job_id, user.id
    )
    return bool(found)


async def seconds_since_job_ended(pool: asyncpg.Pool, job_id: JobId) -> float | None:
    """How long ago the job reached a final state; None while it runs."""
    value = await pool.fetchval(
        "SELECT extract(epoch FROM now() - finished_at)::float8 FROM jobs"
        " WHERE id = $1 AND finished_at IS NOT NULL",
        job_id,
    )
    return None if value is None else float(value)
