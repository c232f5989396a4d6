"""Domain Structs of the schedules area, as its queries return them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

from shared.ids import UserId


class MissedPolicy(enum.StrEnum):
    """What happens to the runs that fell due while no scheduler ran."""

    SKIP = "skip"  # dropped; the next run is the first one after now
    ONCE = "once"  # collapsed into one run fired at once, then the normal cadence


class Cadence(msgspec.Struct, frozen=True, kw_only=True):
    """When runs fall: a 5-field cron expression in `timezone`, or every `every_s` seconds."""

    cron: str | None = None
    timezone: str = "UTC"
    every_s: float | None = None


class NewSchedule(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule to write, its target checked against the registered task type already."""

    user_id: UserId
    name: str | None
    cadence: Cadence
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    unique: bool
    missed: MissedPolicy
    paused: bool
    next_run_at: datetime
    workflow: bool = False  # the task is a @workflow: a run starts a workflow of it


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """One schedule as PostgreSQL holds it."""

    schedule_id: str
    user_id: UserId
    name: str | None
    cadence: Cadence
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    unique: bool
    missed: MissedPolicy
    paused: bool
    next_run_at: datetime
    last_run_at: datetime | None
    last_task_id: str | None
    created_at: datetime
    updated_at: datetime
    workflow: bool = False
    last_workflow_id: str | None = None


class SchedulePage(msgspec.Struct, frozen=True, kw_only=True):
    schedules: list[Schedule]
    page: int
    per_page: int
    total: int
