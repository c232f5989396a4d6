"""HTTP bodies of /api/v1/workflows.

A workflow is submitted by name (a `@workflow` a live worker registered, with its arguments)
or as an inline DAG of registered tasks (`steps`), not both. Inputs forbid unknown fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from shared.workflows import MAX_STEPS, StepSpec

if TYPE_CHECKING:
    from services.gateway.workflows.records import StepRecord, WorkflowRecord, WorkflowSummary


class WorkflowRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`workflow` + `args`, or `steps`: each {key, task, args, after, input, priority}."""

    workflow: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    args: dict[str, Any] = {}
    steps: Annotated[list[StepSpec], msgspec.Meta(max_length=MAX_STEPS)] | None = None
    allow_partial: bool = False

    def __post_init__(self) -> None:
        if (self.workflow is None) == (self.steps is None):
            raise ValueError("workflow, steps: give a workflow's name or its steps, not both")
        if self.steps is not None and self.args:
            raise ValueError("args: an inline workflow's arguments go in its steps")


class WorkflowExportRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal["zip", "tar.gz"] = "zip"


class SubmitWorkflowResponse(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    status: str
    steps: int
    existing: bool = False


class StepResponse(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    kind: str
    task: str
    status: str
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
    duration_s: float | None


class WorkflowResponse(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    name: str | None
    status: str
    allow_partial: bool
    args: dict[str, Any]
    result: Any
    error: str | None
    trace_id: str | None
    created_at: datetime
    finished_at: datetime | None
    steps: list[StepResponse]
    # Every file a step reported making (`artifacts` in its result), in step order.
    artifacts: list[Any]


class WorkflowSummaryResponse(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    name: str | None
    status: str
    created_at: datetime
    finished_at: datetime | None


class WorkflowListResponse(msgspec.Struct, frozen=True, kw_only=True):
    workflows: list[WorkflowSummaryResponse]
    page: int
    per_page: int
    total: int


class WorkflowCancelResponse(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    status: str


def workflow_response(record: WorkflowRecord) -> WorkflowResponse:
    steps = [
        StepResponse(**msgspec.structs.asdict(step), duration_s=_duration_s(step))
        for step in record.steps
    ]
    artifacts = [
        artifact
        for step in record.steps
        if isinstance(step.result, dict) and isinstance(step.result.get("artifacts"), list)
        for artifact in step.result["artifacts"]
    ]
    fields = msgspec.structs.asdict(record)
    fields.update(steps=steps, artifacts=artifacts)
    return WorkflowResponse(**fields)


def _duration_s(step: StepRecord) -> float | None:
    began = step.started_at or step.launched_at
    if began is None or step.finished_at is None:
        return None
    return (step.finished_at - began).total_seconds()


def workflow_list_response(
    found: list[WorkflowSummary], *, page: int, per_page: int, total: int
) -> WorkflowListResponse:
    return WorkflowListResponse(
        workflows=[WorkflowSummaryResponse(**msgspec.structs.asdict(w)) for w in found],
        page=page,
        per_page=per_page,
        total=total,
    )
