"""HTTP bodies of /api/v1/schedules, and their mapping from the records.

Inputs forbid unknown fields, so a typo in a field name is an error, not a silent default. A
body of the wrong shape answers 400; a cadence that cannot run (checked by
services.gateway.schedules.cadence) answers 422.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from services.gateway.schedules.records import MissedPolicy
from services.gateway.tasks.schemas import TaskName

if TYPE_CHECKING:
    from services.gateway.schedules.records import Schedule, SchedulePage

# Stored in text columns: NUL is refused there, control characters are noise.
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_PRINTABLE)]
CronExpression = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=_PRINTABLE)]
ZoneName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_PRINTABLE)]


class ScheduleRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A task to enqueue on a cadence: a 5-field `cron` expression (in `timezone`, UTC by
    default) or a fixed interval `every_s` (at least 1 second), not both.

    `priority` defaults to the task type's; `missed` says what happens to runs that fell due
    while no scheduler ran: `skip` them (default) or fire `once` for all of them.
    """

    task: TaskName
    args: dict[str, Any] = {}
    cron: CronExpression | None = None
    every_s: float | None = None
    timezone: ZoneName | None = None
    priority: Annotated[int, msgspec.Meta(ge=1, le=10)] | None = None
    missed: MissedPolicy = MissedPolicy.SKIP
    paused: bool = False
    name: Label | None = None


class ScheduleResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One schedule; `next_run_at` is null while it is paused, `timezone` for a cron one."""

    schedule_id: str
    name: str | None
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    cron: str | None
    timezone: str | None
    every_s: float | None
    missed: MissedPolicy
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_task_id: str | None
    created_at: datetime
    updated_at: datetime
    # The task is a @workflow: each run starts a workflow (the latest: last_workflow_id).
    workflow: bool = False
    last_workflow_id: str | None = None


class ScheduleListResponse(msgspec.Struct, frozen=True, kw_only=True):
    schedules: list[ScheduleResponse]
    page: int
    per_page: int
    total: int


class ScheduleRunResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer of a run now: the task it enqueued."""

    schedule_id: str
    task_id: str


def schedule_response(schedule: Schedule) -> ScheduleResponse:
    cron = schedule.cadence.cron
    return ScheduleResponse(
        schedule_id=schedule.schedule_id,
        name=schedule.name,
        task=schedule.task,
        args=schedule.args,
        queue=schedule.queue,
        priority=schedule.priority,
        cron=cron,
        timezone=schedule.cadence.timezone if cron is not None else None,
        every_s=schedule.cadence.every_s,
        missed=schedule.missed,
        paused=schedule.paused,
        next_run_at=None if schedule.paused else schedule.next_run_at,
        last_run_at=schedule.last_run_at,
        last_task_id=schedule.last_task_id,
        created_at=schedule.created_at,
        updated_at=schedule.updated_at,
        workflow=schedule.workflow,
        last_workflow_id=schedule.last_workflow_id,
    )


def schedule_list_response(page: SchedulePage) -> ScheduleListResponse:
    return ScheduleListResponse(
        schedules=[schedule_response(s) for s in page.schedules],
        page=page.page,
        per_page=page.per_page,
        total=page.total,
    )
