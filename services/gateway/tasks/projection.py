"""The projection of task events onto `tasks` and the execution history (one row per try).

Only pending and running tasks move, so a replayed, late or out-of-order event, or one after a
cancel, changes nothing. A try's start names its attempt: one that starts while an earlier try
is still 'running' (its worker was killed and the entry reclaimed) ends that one 'interrupted',
whether the later try's start or its end is projected first. A follow-up a task queued
(TaskEnqueued) is enqueued here, in the event's transaction, as POST /api/v1/tasks enqueues.
Each rule takes a wave of the tracker's batch at once: a statement or two per event type.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from services.gateway.executions.history import ExecutionStatus, Task
from services.gateway.executions.tries import End, finish_tries, interrupt_overtaken, started_at
from services.gateway.projection import Projector, one_by_one
from services.gateway.tasks.enqueueing import enqueue
from services.gateway.tasks.records import NewTask
from services.gateway.workflows.engine import StepEnd, steps_ended
from services.gateway.workflows.records import StepStatus
from shared.events import (
    ENCODER,
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
    from collections.abc import Sequence

    import asyncpg

    from shared.events import TaskEvent
    from shared.ids import JobId

    # A try's end: its event, how it ended, its error and the attempt it names.
    Ending = tuple[TaskSucceeded | TaskRetrying | TaskFailed, ExecutionStatus, str | None, int]

_OPEN = "status IN ('pending', 'running')"
# What a task's end returns: its owner, for the history, and its workflow step, if any.
_ENDED = (
    "e.id, t.user_id, t.workflow_id::text AS workflow_id, t.step, t.error,"
    " CASE WHEN t.workflow_id IS NULL THEN NULL ELSE t.result END AS result"
)


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


async def lock_tasks(connection: asyncpg.Connection, events: Sequence[TaskEvent]) -> set[str]:
    """The projection's lock for a batch's task events: their tasks' rows (a follow-up's
    parent's) in id order, in one statement; the ids of the events whose task is on record."""
    subjects = {e.event_id: _subject_of(e) for e in events}
    rows = await connection.fetch(
        "SELECT e.id FROM unnest($1::text[]) AS e(id) JOIN tasks t ON t.id = e.id::uuid"
        " ORDER BY t.id FOR UPDATE OF t",
        list(set(subjects.values())),
    )
    found = {row["id"] for row in rows}
    return {event_id for event_id, task_id in subjects.items() if task_id in found}


def _subject_of(event: TaskEvent) -> str:
    return event.parent_id if isinstance(event, TaskEnqueued) else event.task_id


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


async def tasks_checkpointed(
    connection: asyncpg.Connection, events: Sequence[TaskCheckpointed]
) -> set[JobId]:
    # Kept whatever the status: a later run of it (a re-drive) may still resume from it.
    await connection.execute(
        "UPDATE tasks t SET checkpoint = e.state::jsonb, checkpoint_at = e.at, updated_at = now()"
        " FROM unnest($1::text[], $2::text[], $3::float8[]) AS e(id, state, at)"
        " WHERE t.id = e.id::uuid AND (t.checkpoint_at IS NULL OR t.checkpoint_at <= e.at)",
        [e.task_id for e in events],
        [_json(e.state) for e in events],
        [e.at for e in events],
    )
    return set()


# A try's start, its row in the history in the same statement.
_START = f"""
WITH moved AS (
  UPDATE tasks t SET status = 'running', attempts = greatest(t.attempts, e.attempt),
    worker = e.worker, started_at = coalesce(t.started_at, to_timestamp(e.at)), updated_at = now()
  FROM unnest($1::text[], $2::int[], $3::text[], $4::float8[]) AS e(id, attempt, worker, at)
  WHERE t.id = e.id::uuid AND t.{_OPEN} AND e.attempt > t.ended_attempt
    AND e.attempt >= t.attempts
  RETURNING e.id, t.user_id, e.attempt, e.worker, e.at
)
INSERT INTO executions (task, subject_id, user_id, worker, status, attempt, started_at)
SELECT $5, m.id, m.user_id, m.worker, $6, m.attempt, to_timestamp(m.at) FROM moved m
RETURNING subject_id
"""


async def tasks_started(
    connection: asyncpg.Connection, events: Sequence[TaskStarted]
) -> set[JobId]:
    started = await connection.fetch(
        _START,
        [e.task_id for e in events],
        [e.attempt for e in events],
        [e.worker or None for e in events],
        [e.at for e in events],
        Task.TASK,
        ExecutionStatus.RUNNING,
    )
    if started:
        await interrupt_overtaken(connection, Task.TASK, [row["subject_id"] for row in started])
    return set()


async def tasks_progressed(
    connection: asyncpg.Connection, events: Sequence[TaskProgress]
) -> set[JobId]:
    await connection.execute(
        "UPDATE tasks t SET progress = jsonb_build_object('done', e.done, 'total', e.total,"
        " 'message', e.message, 'at', e.at), updated_at = now()"
        " FROM unnest($1::text[], $2::float8[], $3::float8[], $4::text[], $5::float8[])"
        "   AS e(id, done, total, message, at)"
        f" WHERE t.id = e.id::uuid AND t.{_OPEN}"
        " AND (t.progress IS NULL OR (t.progress ->> 'at')::float8 <= e.at)",
        [e.task_id for e in events],
        [e.done for e in events],
        [e.total for e in events],
        [e.message for e in events],
        [e.at for e in events],
    )
    return set()


async def tasks_succeeded(
    connection: asyncpg.Connection, events: Sequence[TaskSucceeded]
) -> set[JobId]:
    """-> completed. A fast try reports no start: its end carries when it began."""
    ended = await connection.fetch(
        "UPDATE tasks t SET status = 'completed', result = e.result::jsonb, error = NULL,"
        " attempts = greatest(t.attempts, e.attempt), worker = coalesce(e.worker, t.worker),"
        " started_at = coalesce(t.started_at, to_timestamp(e.started_at)),"
        " finished_at = to_timestamp(e.at), updated_at = now()"
        " FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::float8[],"
        "   $6::float8[]) AS e(id, result, attempt, worker, at, started_at)"
        f" WHERE t.id = e.id::uuid AND t.{_OPEN} RETURNING {_ENDED}",
        [e.task_id for e in events],
        [_json(e.result) for e in events],
        [e.attempt for e in events],
        [e.worker or None for e in events],
        [e.at for e in events],
        [started_at(e, e.at) for e in events],
    )
    await _end_tries(
        connection,
        [(e, ExecutionStatus.COMPLETED, None, e.attempt) for e in events],
        owners=ended,
    )
    await _end_steps(connection, ended, StepStatus.COMPLETED)
    return set()


async def tasks_retrying(
    connection: asyncpg.Connection, events: Sequence[TaskRetrying]
) -> set[JobId]:
    ended = await connection.fetch(
        "UPDATE tasks t SET status = 'pending', error = e.error, updated_at = now(),"
        " ended_attempt = greatest(t.ended_attempt, e.attempt),"
        " attempts = greatest(t.attempts, e.attempt)"
        " FROM unnest($1::text[], $2::text[], $3::int[]) AS e(id, error, attempt)"
        f" WHERE t.id = e.id::uuid AND t.{_OPEN} AND e.attempt > t.ended_attempt"
        " RETURNING e.id, t.user_id",
        [e.task_id for e in events],
        [e.error for e in events],
        [e.attempt for e in events],
    )
    await _end_tries(
        connection,
        [(e, ExecutionStatus.RETRIED, e.error, e.attempt) for e in events],
        owners=ended,
    )
    return set()


async def tasks_failed(connection: asyncpg.Connection, events: Sequence[TaskFailed]) -> set[JobId]:
    ended = await connection.fetch(
        "UPDATE tasks t SET status = CASE WHEN e.dead THEN 'dead' ELSE 'failed' END,"
        " error = e.error, attempts = greatest(t.attempts, e.attempts),"
        " finished_at = to_timestamp(e.at), updated_at = now()"
        " FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[], $5::bool[])"
        "   AS e(id, error, attempts, at, dead)"
        f" WHERE t.id = e.id::uuid AND t.{_OPEN} RETURNING {_ENDED}",
        [e.task_id for e in events],
        [e.error for e in events],
        [e.attempts for e in events],
        [e.at for e in events],
        [e.dead_lettered for e in events],
    )
    await _end_tries(
        connection,
        [(e, ExecutionStatus.FAILED, e.error, e.attempts) for e in events],
        owners=ended,
    )
    await _end_steps(connection, ended, StepStatus.FAILED)
    return set()


async def _end_steps(
    connection: asyncpg.Connection, ended: Sequence[asyncpg.Record], status: StepStatus
) -> None:
    """The workflow steps among the tasks that just ended move their workflows on."""
    ends = [
        StepEnd(row["workflow_id"], row["step"], status, row["result"], row["error"])
        for row in ended
        if row["workflow_id"] is not None
    ]
    if ends:
        await steps_ended(connection, ends)


async def _end_tries(
    connection: asyncpg.Connection,
    tries: Sequence[Ending],
    *,
    owners: Sequence[asyncpg.Record],
) -> None:
    """Record the end of each try whose task it ended; a task `owners` lacks had ended already
    (a cancel, a replay): its history is written."""
    owner_of = {row["id"]: str(row["user_id"]) for row in owners}
    ends = [
        End(
            task=Task.TASK,
            subject_id=event.task_id,
            job_id=None,
            file_id=None,
            user_id=owner_of[event.task_id],
            status=status,
            at=event.at,
            started_at=started_at(event, event.at),
            error=error,
            attempt=attempt,
            worker=event.worker or None,
        )
        for event, status, error, attempt in tries
        if event.task_id in owner_of
    ]
    if not ends:
        return
    await finish_tries(connection, ends)
    # A try's end may be recorded before its start (two batches in flight): a try it
    # overtook ends here either way.
    await interrupt_overtaken(connection, Task.TASK, [end.subject_id for end in ends])


def _json(value: object) -> str | None:
    # As text, cast in SQL: a list in an array parameter would read as a dimension.
    return None if value is None else ENCODER.encode(value).decode()


# Each rule is one statement (two with the history) for a wave's events of its type, at most
# one per task; the batch's task rows are locked once, in id order, before the first wave.
PROJECTORS: dict[type, Projector] = {
    TaskStarted: Projector(apply=tasks_started, lock=lock_task_of, lock_all=lock_tasks),
    TaskProgress: Projector(
        apply=tasks_progressed, lock=lock_task_of, lock_all=lock_tasks, claimed=False
    ),
    # A task's end may start the next steps of its workflow: outbox rows.
    TaskSucceeded: Projector(
        apply=tasks_succeeded, lock=lock_task_of, lock_all=lock_tasks, writes_outbox=True
    ),
    TaskRetrying: Projector(apply=tasks_retrying, lock=lock_task_of, lock_all=lock_tasks),
    TaskFailed: Projector(
        apply=tasks_failed, lock=lock_task_of, lock_all=lock_tasks, writes_outbox=True
    ),
    # A follow-up is rare, and its enqueue a handful of statements: one by one.
    TaskEnqueued: Projector(
        apply=one_by_one(task_enqueued),
        lock=lock_parent_of,
        lock_all=lock_tasks,
        writes_outbox=True,
    ),
    # Idempotent by itself (the latest `at` wins) and as frequent as a task's steps: unclaimed.
    TaskCheckpointed: Projector(
        apply=tasks_checkpointed, lock=lock_task_of, lock_all=lock_tasks, claimed=False
    ),
}
