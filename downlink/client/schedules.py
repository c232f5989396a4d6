"""Operations on schedules (make, list, show, pause, resume, run now, delete) and the admin's
purge of a task queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from downlink.client.errors import error_for
from downlink.client.models import Purged, Schedule, SchedulePage, ScheduleRun
from downlink.client.protocol import API, Call, Operation, Reply, call

if TYPE_CHECKING:
    from collections.abc import Mapping

    from downlink.client.models import MissedPolicy


def create_schedule(
    when: str | float,
    task: str,
    args: Mapping[str, Any],
    *,
    timezone: str | None,
    priority: int | None,
    missed: MissedPolicy,
    name: str | None,
    paused: bool,
) -> Operation[Schedule]:
    """`when` is a cron expression (a string) or an interval in seconds (a number)."""
    cadence: dict[str, Any] = {"cron": when} if isinstance(when, str) else {"every_s": when}
    optional = {"timezone": timezone, "priority": priority, "name": name}
    body = (
        {"task": task, "args": dict(args), "missed": missed, "paused": paused}
        | cadence
        | {k: v for k, v in optional.items() if v is not None}
    )
    return (yield from call("POST", f"{API}/schedules", Schedule, json=body))


def list_schedules(*, page: int, per_page: int) -> Operation[SchedulePage]:
    params = {"page": page, "per_page": per_page}
    return (yield from call("GET", f"{API}/schedules", SchedulePage, params=params))


def get_schedule(schedule_id: str) -> Operation[Schedule]:
    return (yield from call("GET", f"{API}/schedules/{schedule_id}", Schedule))


def pause_schedule(schedule_id: str) -> Operation[Schedule]:
    return (yield from call("POST", f"{API}/schedules/{schedule_id}/pause", Schedule))


def resume_schedule(schedule_id: str) -> Operation[Schedule]:
    return (yield from call("POST", f"{API}/schedules/{schedule_id}/resume", Schedule))


def run_schedule(schedule_id: str) -> Operation[ScheduleRun]:
    return (yield from call("POST", f"{API}/schedules/{schedule_id}/run", ScheduleRun))


def delete_schedule(schedule_id: str) -> Operation[None]:
    # 204: no body to decode, so not `call`.
    reply: Reply = yield Call(method="DELETE", path=f"{API}/schedules/{schedule_id}")
    if reply.status >= 400:
        raise error_for(reply.status, reply.body, reply.headers)


def purge(queue: str) -> Operation[Purged]:
    return (yield from call("POST", f"{API}/queues/{quote(queue, safe='')}/purge", Purged))
