"""The tasks area's SQL for reading, listing and cancelling tasks (enqueueing is
services.gateway.tasks.enqueueing's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.tasks.errors import TaskAlreadyEnded, TaskNotFound
from services.gateway.tasks.records import (
    OPEN_STATUSES,
    TaskPage,
    TaskRecord,
)
from services.gateway.workflows.engine import StepEnd, steps_ended
from services.gateway.workflows.records import StepStatus
from shared.ids import TaskId
from shared.task_types import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

    from shared.ids import UserId

_COLUMNS = (
    "id, task, queue, status, priority, args, attempts, progress, result, error, worker,"
    " trace_id, run_at, created_at, started_at, finished_at, parent_id"
)


async def get_task(pool: asyncpg.Pool, user_id: UserId, task_id: str) -> TaskRecord:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2", task_id, user_id
    )
    if row is None:
        raise TaskNotFound(task_id)
    return _record(row)


async def list_tasks(
    pool: asyncpg.Pool,
    user_id: UserId,
    *,
    task: str | None,
    status: TaskStatus | None,
    page: int,
    per_page: int,
) -> TaskPage:
    """The caller's tasks, newest first, filtered by name and status."""
    where = "user_id = $1 AND ($2::text IS NULL OR task = $2) AND ($3::text IS NULL OR status = $3)"
    async with pool.acquire() as connection:
        total = await connection.fetchval(
            f"SELECT count(*) FROM tasks WHERE {where}", user_id, task, status
        )
        rows = await connection.fetch(
            f"SELECT {_COLUMNS} FROM tasks WHERE {where}"
            " ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5",
            user_id,
            task,
            status,
            per_page,
            (page - 1) * per_page,
        )
    return TaskPage(tasks=[_record(r) for r in rows], page=page, per_page=per_page, total=total)


async def cancel_task(connection: asyncpg.Connection, user_id: UserId, task_id: str) -> None:
    """Mark an open task cancelled (the caller's transaction), with its running try."""
    status = await connection.fetchval(
        "SELECT status FROM tasks WHERE id = $1 AND user_id = $2 FOR UPDATE", task_id, user_id
    )
    if status is None:
        raise TaskNotFound(task_id)
    if status not in OPEN_STATUSES:
        raise TaskAlreadyEnded(task_id, status)
    await cancel_open_tasks(connection, [task_id])


async def cancel_open_tasks(
    connection: asyncpg.Connection, task_ids: Sequence[str]
) -> list[asyncpg.Record]:
    """Mark those of `task_ids` still open cancelled, with their running tries, and end the
    workflow steps they were (the caller's transaction, the rows locked); the ones it moved.
    Workers hear of it from the caller, after the commit."""
    ended = await connection.fetch(
        "UPDATE tasks SET status = 'cancelled', finished_at = now(), updated_at = now()"
        " WHERE id = ANY($1::uuid[]) AND status IN ('pending', 'running')"
        " RETURNING id::text AS id, workflow_id::text AS workflow_id, step",
        list(task_ids),
    )
    await connection.execute(
        "UPDATE executions SET status = 'cancelled', finished_at = now(),"
        " duration_s = greatest(0, extract(epoch FROM now() - started_at)),"
        " error = coalesce(error, 'the task was cancelled while this ran')"
        " WHERE task = 'task' AND subject_id = ANY($1::text[]) AND status = 'running'",
        [row["id"] for row in ended],
    )
    steps = [
        StepEnd(row["workflow_id"], row["step"], StepStatus.CANCELLED, error="cancelled")
        for row in ended
        if row["workflow_id"] is not None
    ]
    if steps:
        await steps_ended(connection, steps)
    return list(ended)


def _record(row: asyncpg.Record) -> TaskRecord:
    return TaskRecord(
        task_id=TaskId(str(row["id"])),
        task=row["task"],
        queue=row["queue"],
        status=TaskStatus(row["status"]),
        priority=row["priority"],
        args=row["args"],
        attempts=row["attempts"],
        progress=row["progress"],
        result=row["result"],
        error=row["error"],
        worker=row["worker"],
        trace_id=row["trace_id"],
        run_at=row["run_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        parent_id=None if row["parent_id"] is None else TaskId(str(row["parent_id"])),
    )
