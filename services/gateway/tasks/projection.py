"""The projection of task events onto `tasks` and the execution history (one row per try).

Only pending and running tasks move, so a replayed, late or out-of-order event, or one after a
cancel, changes nothing. A try's start names its attempt: one that starts while an earlier try
is still 'running' (its worker was killed and the entry reclaimed) ends that one 'interrupted',
whether the later try's start or its end is projected first. A follow-up a task queued
(TaskEnqueued) is enqueued here, in the event's transaction, as POST /api/v1/tasks enqueues.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from services.gateway.executions.history import ExecutionStatus, Task
from services.gateway.executions.tries import End, finish_try, insert_try, interrupt_overtaken
from services.gateway.projection import Projector, one_by_one
from services.gateway.tasks.queries import enqueue
from services.gateway.tasks.records import NewTask
from shared.events import (
    TaskCheckpointed,
    TaskEnqueued,
    TaskFailed,
    TaskProgress,
    TaskRetrying,
    TaskStarted,
    TaskSucceeded,
)
from shared.ids import UserId
from shared.telemetry import span_context_of

if TYPE_CHECKING:
    import asyncpg

    from shared.events import TaskEvent

_OPEN = "status IN ('pending', 'running')"


async def lock_task_of(connection: asyncpg.Connection, event: TaskEvent) -> bool:
    """The projection's lock for a task event: the task row; False when there is none."""
    found = await connection.fetchval(
        "SELECT true FROM tasks WHERE id = $1 FOR UPDATE", event.task_id
    )
    return bool(found)


async def lock_parent_of(connection: asyncpg.Connection, event: TaskEnqueued) -> bool:
    """A follow-up's lock: its parent's row (the new task has none yet); False without one."""
    found = await connection.fetchval(
        "SELECT true FROM tasks WHERE id = $1 FOR UPDATE", event.parent_id
    )
    return bool(found)


async def task_enqueued(connection: asyncpg.Connection, event: TaskEnqueued) -> bool:
    # The owner is the parent's, whatever the event says: a worker cannot queue for another.
    owner = await connection.fetchval("SELECT user_id FROM tasks WHERE id = $1", event.parent_id)
    parent_trace = span_context_of(event.trace_headers.get("traceparent", ""))
    await enqueue(
        connection,
        NewTask(
            user_id=UserId(str(owner)),
            task=event.task,
            queue=event.queue,
            args=event.args,
            priority=event.priority,
            run_at=None if event.run_at is None else datetime.fromtimestamp(event.run_at, UTC),
            unique=event.unique,
            task_id=event.task_id,
            parent_id=event.parent_id,
        ),
        trace_id=None if parent_trace is None else format(parent_trace.trace_id, "032x"),
        trace_headers=event.trace_headers,
    )
    return False


async def task_checkpointed(connection: asyncpg.Connection, event: TaskCheckpointed) -> bool:
    # Kept whatever the status: a later run of it (a re-drive) may still resume from it.
    await connection.execute(
        "UPDATE tasks SET checkpoint = $2, checkpoint_at = $3, updated_at = now()"
        " WHERE id = $1 AND (checkpoint_at IS NULL OR checkpoint_at <= $3)",
        event.task_id,
        event.state,
        event.at,
    )
    return False


async def task_started(connection: asyncpg.Connection, event: TaskStarted) -> bool:
    owner = await connection.fetchval(
        "UPDATE tasks SET status = 'running', attempts = greatest(attempts, $2), worker = $3,"
        " started_at = coalesce(started_at, to_timestamp($4)), updated_at = now()"
        f" WHERE id = $1 AND {_OPEN} AND $2 > ended_attempt AND $2 >= attempts"
        " RETURNING user_id",
        event.task_id,
        event.attempt,
        event.worker or None,
        event.at,
    )
    if owner is None:
        return False
    await insert_try(
        connection,
        task=Task.TASK,
        subject_id=event.task_id,
        job_id=None,
        file_id=None,
        user_id=str(owner),
        status=ExecutionStatus.RUNNING,
        attempt=event.attempt,
        started_at=event.at,
        worker=event.worker or None,
    )
    await interrupt_overtaken(connection, Task.TASK, [event.task_id])
    return False


async def task_progress(connection: asyncpg.Connection, event: TaskProgress) -> bool:
    await connection.execute(
        "UPDATE tasks SET progress = jsonb_build_object('done', $2::float8, 'total', $3::float8,"
        " 'message', $4::text, 'at', $5::float8), updated_at = now()"
        f" WHERE id = $1 AND {_OPEN}"
        " AND (progress IS NULL OR (progress ->> 'at')::float8 <= $5)",
        event.task_id,
        event.done,
        event.total,
        event.message,
        event.at,
    )
    return False


async def task_succeeded(connection: asyncpg.Connection, event: TaskSucceeded) -> bool:
    owner = await connection.fetchval(
        "UPDATE tasks SET status = 'completed', result = $2, error = NULL,"
        " attempts = greatest(attempts, $3), worker = coalesce($4, worker),"
        " started_at = coalesce(started_at, to_timestamp($5)),"
        " finished_at = to_timestamp($5), updated_at = now()"
        f" WHERE id = $1 AND {_OPEN} RETURNING user_id",
        event.task_id,
        event.result,
        event.attempt,
        event.worker or None,
        event.at,
    )
    await _end_try(
        connection,
        event,
        owner=owner,
        status=ExecutionStatus.COMPLETED,
        error=None,
        attempt=event.attempt,
    )
    return False


async def task_retrying(connection: asyncpg.Connection, event: TaskRetrying) -> bool:
    owner = await connection.fetchval(
        "UPDATE tasks SET status = 'pending', error = $2, updated_at = now(),"
        " ended_attempt = greatest(ended_attempt, $3), attempts = greatest(attempts, $3)"
        f" WHERE id = $1 AND {_OPEN} AND $3 > ended_attempt RETURNING user_id",
        event.task_id,
        event.error,
        event.attempt,
    )
    await _end_try(
        connection,
        event,
        owner=owner,
        status=ExecutionStatus.RETRIED,
        error=event.error,
        attempt=event.attempt,
    )
    return False


async def task_failed(connection: asyncpg.Connection, event: TaskFailed) -> bool:
    owner = await connection.fetchval(
        "UPDATE tasks SET status = CASE WHEN $5 THEN 'dead' ELSE 'failed' END, error = $2,"
        " attempts = greatest(attempts, $3), finished_at = to_timestamp($4), updated_at = now()"
        f" WHERE id = $1 AND {_OPEN} RETURNING user_id",
        event.task_id,
        event.error,
        event.attempts,
        event.at,
        event.dead_lettered,
    )
    await _end_try(
        connection,
        event,
        owner=owner,
        status=ExecutionStatus.FAILED,
        error=event.error,
        attempt=event.attempts,
    )
    return False


async def _end_try(
    connection: asyncpg.Connection,
    event: TaskSucceeded | TaskRetrying | TaskFailed,
    *,
    owner: object,
    status: ExecutionStatus,
    error: str | None,
    attempt: int,
) -> None:
    if owner is None:
        return  # the task had ended (a cancel, a replay): its history is written already
    await finish_try(
        connection,
        End(
            task=Task.TASK,
            subject_id=event.task_id,
            job_id=None,
            file_id=None,
            user_id=str(owner),
            status=status,
            at=event.at,
            started_at=event.at,
            error=error,
            attempt=attempt,
            worker=event.worker or None,
        ),
    )
    # This try's end may be recorded before its start (two batches in flight): a try it
    # overtook ends here either way.
    await interrupt_overtaken(connection, Task.TASK, [event.task_id])


# A task settles no job, and one task reports a handful of events in its life: one by one.
PROJECTORS: dict[type, Projector] = {
    TaskStarted: Projector(apply=one_by_one(task_started), lock=lock_task_of),
    TaskProgress: Projector(apply=one_by_one(task_progress), lock=lock_task_of, claimed=False),
    TaskSucceeded: Projector(apply=one_by_one(task_succeeded), lock=lock_task_of),
    TaskRetrying: Projector(apply=one_by_one(task_retrying), lock=lock_task_of),
    TaskFailed: Projector(apply=one_by_one(task_failed), lock=lock_task_of),
    TaskEnqueued: Projector(
        apply=one_by_one(task_enqueued), lock=lock_parent_of, writes_outbox=True
    ),
    # Idempotent by itself (the latest `at` wins) and as frequent as a task's steps: unclaimed.
    TaskCheckpointed: Projector(
        apply=one_by_one(task_checkpointed), lock=lock_task_of, claimed=False
    ),
}
