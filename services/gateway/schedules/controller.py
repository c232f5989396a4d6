"""/api/v1/schedules: make, list, pause, resume, run now and delete the caller's schedules."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, Response, delete, get, post, route
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.enums import HttpMethod
from litestar.params import FromPath, JSONBody
from opentelemetry import trace
from redis.asyncio import Redis

from services.gateway.auth import User
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import PageNumber, PerPage, allow_methods, errors
from services.gateway.schedules import cadence
from services.gateway.schedules.control import pause_schedule, resume_schedule, run_schedule_now
from services.gateway.schedules.queries import (
    delete_schedule,
    get_schedule,
    insert_schedule,
    list_schedules,
)
from services.gateway.schedules.records import Cadence, NewSchedule
from services.gateway.schedules.schemas import (
    ScheduleListResponse,
    ScheduleRequest,
    ScheduleResponse,
    ScheduleRunResponse,
    schedule_list_response,
    schedule_response,
)
from services.gateway.tasks.controller import catalogue
from shared.task_catalogue import Catalogue
from shared.task_types import check_arguments

log = logging.getLogger(__name__)

_CREATE_ERRORS = errors(
    400,
    404,
    413,
    422,
    meaning={
        404: "no live worker registered a task of that name",
        413: "the arguments are over 1 MiB as JSON",
        422: "a cadence that cannot run (a cron expression that does not parse, both or neither"
        " of cron and every_s, every_s under 1, an unknown timezone), or arguments that do not"
        " match the task's signature; `detail` names the field (`cron`, `args.a`)",
    },
)
_ONE = errors(400, 404)


class SchedulesController(Controller):
    """Schedules of the authenticated user; another user's ids answer 404."""

    path = "/schedules"
    tags = ["schedules"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post("/", status_code=201, request_max_body_size=2 * 1024 * 1024, responses=_CREATE_ERRORS)
    async def create_schedule(
        self,
        *,
        data: JSONBody[ScheduleRequest],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        state: State,
    ) -> ScheduleResponse:
        """Enqueue a registered task on a cron expression or a fixed interval, from now on."""
        new = await _new_schedule(catalogue(state, redis), data, current_user)
        async with pool.acquire() as connection:
            created = await insert_schedule(connection, new)
        trace.get_current_span().set_attribute("downlink.schedule_id", created.schedule_id)
        log.info(
            "schedule %s made: %s, first run at %s",
            created.schedule_id,
            created.task,
            created.next_run_at.isoformat(),
            extra={"schedule_id": created.schedule_id, "user_id": current_user.id},
        )
        return schedule_response(created)

    allowed_methods = allow_methods("/", "GET, OPTIONS, POST")

    @get("/", responses=errors(400))
    async def list_schedules(
        self,
        *,
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        page: PageNumber = 1,
        per_page: PerPage = 20,
    ) -> ScheduleListResponse:
        """The caller's schedules, newest first."""
        found = await list_schedules(pool, current_user.id, page=page, per_page=per_page)
        return schedule_list_response(found)

    @get("/{schedule_id:uuid}", responses=_ONE)
    async def get_schedule(
        self,
        *,
        schedule_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
    ) -> ScheduleResponse:
        """The schedule: its cadence, target, next and latest run."""
        return schedule_response(await get_schedule(pool, current_user.id, str(schedule_id)))

    @route("/{schedule_id:uuid}", http_method=HttpMethod.OPTIONS, include_in_schema=False)
    async def allowed_methods_of_one(self, schedule_id: FromPath[UUID]) -> Response[None]:
        """The methods of /schedules/{schedule_id}, as for /schedules."""
        return Response(None, status_code=204, headers={"Allow": "DELETE, GET, OPTIONS"})

    @delete("/{schedule_id:uuid}", status_code=204, responses=_ONE)
    async def delete_schedule(
        self,
        *,
        schedule_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
    ) -> None:
        """Delete the schedule: no run of it fires any more (tasks it enqueued stay)."""
        await delete_schedule(pool, current_user.id, str(schedule_id))

    @post("/{schedule_id:uuid}/pause", status_code=200, responses=_ONE)
    async def pause(
        self,
        *,
        schedule_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
    ) -> ScheduleResponse:
        """Stop firing the schedule until it is resumed (pausing a paused one changes nothing)."""
        return schedule_response(await pause_schedule(pool, current_user.id, str(schedule_id)))

    @post("/{schedule_id:uuid}/resume", status_code=200, responses=_ONE)
    async def resume(
        self,
        *,
        schedule_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
    ) -> ScheduleResponse:
        """Fire the schedule again, from its first run after now: the runs that fell while it
        was paused are not made up for, whatever its missed-run policy."""
        return schedule_response(await resume_schedule(pool, current_user.id, str(schedule_id)))

    @post("/{schedule_id:uuid}/run", status_code=202, responses=_ONE)
    async def run_now(
        self,
        *,
        schedule_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        relay: NamedDependency[OutboxRelay],
    ) -> ScheduleRunResponse:
        """Enqueue one run now, paused or not; the schedule's cadence goes on as it was."""
        found, task_id = await run_schedule_now(
            pool, current_user.id, str(schedule_id), relay=relay
        )
        return ScheduleRunResponse(schedule_id=found.schedule_id, task_id=task_id)


async def _new_schedule(types: Catalogue, data: ScheduleRequest, user: User) -> NewSchedule:
    """The schedule to write: its cadence checked (InvalidSchedule), its target against the
    registered type (UnknownTaskType, InvalidArguments, ArgumentsTooLarge)."""
    when = Cadence(cron=data.cron, timezone=data.timezone or "UTC", every_s=data.every_s)
    cadence.check(when)
    registered = await types.task_type(data.task)
    check_arguments(registered, data.args)
    policy = registered.policy
    return NewSchedule(
        user_id=user.id,
        name=data.name,
        cadence=when,
        task=data.task,
        args=data.args,
        queue=registered.queue,
        priority=data.priority or int(policy.get("priority", 5)),
        unique=bool(policy.get("unique", False)),
        missed=data.missed,
        paused=data.paused,
        next_run_at=cadence.first_run(when, datetime.now(UTC)),
        workflow=bool(policy.get("builds_workflow", False)),
    )
