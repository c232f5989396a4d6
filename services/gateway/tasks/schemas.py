"""HTTP bodies of /api/v1/tasks and /api/v1/task-types, and their mapping from the records.

Inputs forbid unknown fields, so a typo in a field name is an error, not a silent default.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from shared.task_types import TaskStatus

if TYPE_CHECKING:
    from services.gateway.tasks.records import EnqueuedTask, TaskPage, TaskRecord
    from shared.task_types import TaskType

TaskName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# At most a year ahead: a later run_at is more likely a unit mistake than a plan.
MAX_DEFER_S = 366 * 86_400


class EnqueueRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A task to run: its registered name and its arguments; when, at which priority.

    `defer_s` or `run_at` (not both) delay it; PostgreSQL keeps it until then.
    """

    task: TaskName
    args: dict[str, Any] = {}
    priority: Annotated[int, msgspec.Meta(ge=1, le=10)] | None = None
    defer_s: Annotated[float, msgspec.Meta(ge=0, le=MAX_DEFER_S)] | None = None
    run_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.defer_s is not None and self.run_at is not None:
            raise ValueError("defer_s, run_at: give one of them, not both")
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ValueError("run_at: give a time zone (e.g. 2026-01-01T12:00:00Z)")


# What one POST /api/v1/tasks/batch may hold; a larger list answers 413 (split it).
MAX_BATCH_TASKS = 1000


class BatchTask(EnqueueRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One task of a batch: as POST /api/v1/tasks takes it, with its own Idempotency key."""

    idempotency_key: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
        | None
    ) = None


class BatchRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Tasks to queue together: all of them, or (any one invalid) none."""

    tasks: Annotated[list[BatchTask], msgspec.Meta(min_length=1)]


class EnqueueResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer: the task (new, or the one the Idempotency-Key or uniqueness named)."""

    task_id: str
    status: TaskStatus
    queue_position: int
    message: str


class BatchResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer of a batch: one entry per task given, in the same order."""

    tasks: list[EnqueueResponse]


class TaskProgressView(msgspec.Struct, frozen=True, kw_only=True):
    done: float
    total: float | None = None
    message: str = ""


class TaskResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One task: where it is, its tries, progress, result or error (with traceback)."""

    task_id: str
    task: str
    queue: str
    status: TaskStatus
    priority: int
    args: dict[str, Any]
    attempts: int
    progress: TaskProgressView | None
    result: Any
    error: str | None
    worker: str | None
    trace_id: str | None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    parent_id: str | None = None  # the task whose ctx.enqueue queued this one


class TaskListResponse(msgspec.Struct, frozen=True, kw_only=True):
    tasks: list[TaskResponse]
    page: int
    per_page: int
    total: int


class TaskCancelResponse(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    status: TaskStatus


class TaskTypeResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A task a live worker can run: its queue, policy and the JSON schema of its arguments."""

    name: str
    queue: str
    policy: dict[str, Any]
    args_schema: dict[str, Any]


class TaskTypeListResponse(msgspec.Struct, frozen=True, kw_only=True):
    task_types: list[TaskTypeResponse]


def enqueue_response(enqueued: EnqueuedTask) -> EnqueueResponse:
    message = (
        "a task with this Idempotency-Key (or these arguments) exists already; nothing new queued"
        if enqueued.existing
        else "task queued"
    )
    return EnqueueResponse(
        task_id=enqueued.task_id,
        status=enqueued.status,
        queue_position=enqueued.queue_position,
        message=message,
    )


def task_response(record: TaskRecord) -> TaskResponse:
    progress = record.progress
    return TaskResponse(
        task_id=record.task_id,
        task=record.task,
        queue=record.queue,
        status=record.status,
        priority=record.priority,
        args=record.args,
        attempts=record.attempts,
        progress=TaskProgressView(
            done=progress.get("done", 0),
            total=progress.get("total"),
            message=progress.get("message") or "",
        )
        if progress
        else None,
        result=record.result,
        error=record.error,
        worker=record.worker,
        trace_id=record.trace_id,
        run_at=record.run_at,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        parent_id=record.parent_id,
    )


def task_list_response(page: TaskPage) -> TaskListResponse:
    return TaskListResponse(
        tasks=[task_response(t) for t in page.tasks],
        page=page.page,
        per_page=page.per_page,
        total=page.total,
    )


def task_types_response(types: list[TaskType]) -> TaskTypeListResponse:
    return TaskTypeListResponse(
        task_types=[
            TaskTypeResponse(name=t.name, queue=t.queue, policy=t.policy, args_schema=t.args_schema)
            for t in types
        ]
    )
