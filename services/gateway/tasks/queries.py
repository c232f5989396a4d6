"""The tasks area's SQL: enqueue (row and outbox in one transaction), read, list, cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.outbox import add_to_outbox
from services.gateway.tasks.commands import TASKS
from services.gateway.tasks.errors import TaskAlreadyEnded, TaskNotFound
from services.gateway.tasks.records import (
    OPEN_STATUSES,
    EnqueuedTask,
    TaskPage,
    TaskRecord,
    TaskStatus,
)
from shared.events import ENCODER, RunTask
from shared.ids import TaskId, new_task_id
from shared.streams import Lane, lane_for, task_stream

if TYPE_CHECKING:
    import asyncpg

    from services.gateway.tasks.records import NewTask
    from shared.ids import UserId

_COLUMNS = (
    "id, task, queue, status, priority, args, attempts, progress, result, error, worker,"
    " trace_id, run_at, created_at, started_at, finished_at"
)


async def enqueue(
    connection: asyncpg.Connection,
    new: NewTask,
    *,
    trace_id: str | None,
    trace_headers: dict[str, str],
) -> EnqueuedTask:
    """Write the task and, unless it is delayed, its command in the outbox (the caller's
    transaction). A repeated Idempotency-Key, or an open task of a `unique` type with the same
    arguments, returns the task written before and writes nothing."""
    existing = await _existing(connection, new)
    if existing is not None:
        return await _enqueued(connection, existing, existing=True)
    task_id = new_task_id()
    command = ENCODER.encode(
        RunTask(
            task_id=task_id,
            user_id=new.user_id,
            task=new.task,
            args=new.args,
            queue=new.queue,
            priority=new.priority,
        )
    )
    # ON CONFLICT waits for a concurrent insert of the same key, so racing enqueues with one
    # key end up with one task.
    row = await connection.fetchrow(
        "INSERT INTO tasks (id, user_id, task, queue, args, priority, run_at, trace_id,"
        " idempotency_key, command) VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8,"
        " $9, $10) ON CONFLICT (user_id, idempotency_key) DO NOTHING"
        " RETURNING id, status, queue, priority, created_at, run_at, run_at > now() AS delayed",
        task_id,
        new.user_id,
        new.task,
        new.queue,
        new.args,
        new.priority,
        new.run_at,
        trace_id,
        new.idempotency_key,
        command,
    )
    if row is None:
        raced = await _existing(connection, new)
        assert raced is not None  # the conflicting row committed before ON CONFLICT returned
        return await _enqueued(connection, raced, existing=True)
    if not row["delayed"]:
        # A delayed task gets its first publish from the reconciler once due.
        await add_to_outbox(
            connection,
            task_stream(new.queue, lane_for(new.priority)),
            command,
            headers=trace_headers,
            command_key=TASKS.key(task_id),
        )
    return await _enqueued(connection, row, existing=False)


async def _existing(connection: asyncpg.Connection, new: NewTask) -> asyncpg.Record | None:
    if new.idempotency_key is not None:
        row = await connection.fetchrow(
            "SELECT id, status, queue, priority, created_at, run_at FROM tasks"
            " WHERE user_id = $1 AND idempotency_key = $2",
            new.user_id,
            new.idempotency_key,
        )
        if row is not None:
            return row
    if not new.unique:
        return None
    return await connection.fetchrow(
        "SELECT id, status, queue, priority, created_at, run_at FROM tasks"
        " WHERE user_id = $1 AND task = $2 AND args = $3::jsonb"
        " AND status = ANY($4::text[]) ORDER BY created_at LIMIT 1",
        new.user_id,
        new.task,
        new.args,
        list(OPEN_STATUSES),
    )


async def _enqueued(
    connection: asyncpg.Connection, row: asyncpg.Record, *, existing: bool
) -> EnqueuedTask:
    """The task's place in its queue's lane: pending tasks due before it, plus one."""
    lane = lane_for(row["priority"])
    ahead = await connection.fetchval(
        "SELECT count(*) FROM tasks WHERE status = 'pending' AND queue = $1"
        " AND priority = ANY($2::smallint[]) AND run_at <= $5"
        " AND (created_at, id) < ($3, $4)",
        row["queue"],
        _priorities(lane),
        row["created_at"],
        row["id"],
        row["run_at"],
    )
    return EnqueuedTask(
        task_id=TaskId(str(row["id"])),
        status=TaskStatus(row["status"]),
        queue_position=ahead + 1,
        existing=existing,
    )


def _priorities(lane: Lane) -> list[int]:
    return [p for p in range(1, 11) if lane_for(p) is lane]


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
    await connection.execute(
        "UPDATE tasks SET status = 'cancelled', finished_at = now(), updated_at = now()"
        " WHERE id = $1",
        task_id,
    )
    await connection.execute(
        "UPDATE executions SET status = 'cancelled', finished_at = now(),"
        " duration_s = greatest(0, extract(epoch FROM now() - started_at)),"
        " error = coalesce(error, 'the task was cancelled while this ran')"
        " WHERE task = 'task' AND subject_id = $1 AND status = 'running'",
        task_id,
    )


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
    )
