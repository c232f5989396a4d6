"""Domain Structs of the tasks area, as its queries return them, and the task statuses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from shared.ids import TaskId, UserId
from shared.task_types import TaskStatus

OPEN_STATUSES = (TaskStatus.PENDING, TaskStatus.RUNNING)


class NewTask(msgspec.Struct, frozen=True, kw_only=True):
    """A task to enqueue, checked against its registered type already.

    `task_id` is given by a follow-up (its worker chose it, so a replay writes nothing new);
    None draws a new one. `parent_id` is the task that enqueued it; `workflow_id` and `step`
    the workflow step it is the work of.
    """

    user_id: UserId
    task: str
    queue: str
    args: dict[str, Any]
    priority: int
    run_at: datetime | None = None
    idempotency_key: str | None = None
    unique: bool = False
    task_id: TaskId | None = None
    parent_id: TaskId | None = None
    workflow_id: str | None = None
    step: str | None = None


class EnqueuedTask(msgspec.Struct, frozen=True, kw_only=True):
    """What enqueueing gave: the task (new, or the one its key or uniqueness named)."""

    task_id: TaskId
    status: TaskStatus
    queue_position: int
    existing: bool


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One task as PostgreSQL holds it."""

    task_id: TaskId
    task: str
    queue: str
    status: TaskStatus
    priority: int
    args: dict[str, Any]
    attempts: int
    progress: dict[str, Any] | None
    result: Any
    error: str | None
    worker: str | None
    trace_id: str | None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    parent_id: TaskId | None = None


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    tasks: list[TaskRecord]
    page: int
    per_page: int
    total: int
