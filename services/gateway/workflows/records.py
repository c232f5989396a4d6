"""Workflow and step statuses, and workflows as the queries return them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec


class WorkflowStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"  # every step succeeded
    PARTIAL = "partial"  # some failed; allow_partial let the others run on
    FAILED = "failed"  # a step failed, and the steps after it were skipped
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    WAITING = "waiting"  # for its parents
    LAUNCHED = "launched"  # its task or job is queued or running (their status says which)
    EXPANDED = "expanded"  # it returned a workflow, which now runs in its place
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a parent did not succeed


FINAL_WORKFLOW_STATUSES = frozenset(
    {
        WorkflowStatus.COMPLETED,
        WorkflowStatus.PARTIAL,
        WorkflowStatus.FAILED,
        WorkflowStatus.CANCELLED,
    }
)


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    kind: str
    task: str
    status: str  # the step's, or while launched its task's (pending, running) or job's
    after: list[str]
    owner: str | None
    task_id: str | None
    job_id: str | None
    attempts: int | None
    progress: dict[str, Any] | None
    result: Any
    error: str | None
    launched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class WorkflowRecord(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    name: str | None
    status: WorkflowStatus
    allow_partial: bool
    args: dict[str, Any]
    result: Any
    error: str | None
    trace_id: str | None
    created_at: datetime
    finished_at: datetime | None
    steps: list[StepRecord]


class WorkflowSummary(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    name: str | None
    status: WorkflowStatus
    created_at: datetime
    finished_at: datetime | None
