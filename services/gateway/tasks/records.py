"""Domain Structs of the tasks area, as its queries return them, and the task statuses."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

from shared.ids import TaskId, UserId


class TaskStatus(StrEnum):
    """Where a task is; all but pending and running are final."""

    PENDING = "pending"  # queued, delayed, or waiting out a retry's backoff
    RUNNING = "running"  # a worker started a try
    COMPLETED = "completed"  # returned; `result` holds its value
    FAILED = "failed"  # reserved: ended in error without a dead letter (not produced yet)
    CANCELLED = "cancelled"  # cancelled by its owner
    DEAD = "dead"  # Permanent error or last try failed; in the dead letters


OPEN_STATUSES = (TaskStatus.PENDING, TaskStatus.RUNNING)


class NewTask(msgspec.Struct, frozen=True, kw_only=True):
    """A task to enqueue, checked against its registered type already."""

    user_id: UserId
    task: str
    queue: str
    args: dict[str, Any]
    priority: int
    run_at: datetime | None = None
    idempotency_key: str | None = None
    unique: bool = False


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


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    tasks: list[TaskRecord]
    page: int
    per_page: int
    total: int


class TaskType(msgspec.Struct, frozen=True, kw_only=True):
    """A task as a live worker registered it (services.tasks.registry writes the same shape)."""

    name: str
    queue: str
    policy: dict[str, Any]
    args_schema: dict[str, Any]
    worker: str = ""
