"""/dashboard/schedules: the list (cadence, next and last run, paused) and its buttons: pause,
resume, run now, delete, each a form POST with the session's CSRF token.

Each button does what the JSON API's route does, with the same functions of
services.gateway.schedules; another user's schedule answers 404, admins act on any.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template

from services.gateway.dashboard import task_queries
from services.gateway.dashboard.sessions import DashboardSession, checked_form
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import PageNumber
from services.gateway.schedules.control import pause_schedule, resume_schedule, run_schedule_now
from services.gateway.schedules.errors import ScheduleNotFound
from services.gateway.schedules.queries import delete_schedule
from shared.ids import UserId

log = logging.getLogger(__name__)

SCHEDULES_PER_PAGE = 50


async def schedule_owner(
    pool: Pool, schedule_id: UUID, session: DashboardSession
) -> tuple[str, UserId]:
    """The schedule and its owner, if the signed-in person may see it; 404 otherwise."""
    schedule = str(schedule_id)
    user = session.user
    viewer = None if user.is_admin else user.id
    owner = await task_queries.owner_in(pool, "schedules", schedule, viewer)
    if owner is None:
        raise ScheduleNotFound(schedule)
    return schedule, owner


class DashboardSchedulesController(Controller):
    """The schedules screen and its four buttons."""

    path = "/schedules"

    @get("/")
    async def schedules(
        self,
        *,
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        page: PageNumber = 1,
    ) -> Template:
        owner = None if session.user.is_admin else session.user.id
        rows, total = await task_queries.list_schedules(
            pool, owner, page=page, per_page=SCHEDULES_PER_PAGE
        )
        return Template(
            "schedules.html",
            context={
                "session": session,
                "page": "schedules",
                "schedules": rows,
                "total": total,
                "page_number": page,
                "pages": max(1, -(-total // SCHEDULES_PER_PAGE)),
            },
        )

    @post("/{schedule_id:uuid}/pause", status_code=303)
    async def pause(
        self,
        *,
        request: Request[Any, Any, State],
        schedule_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
    ) -> Redirect:
        await checked_form(request, session)
        schedule, owner = await schedule_owner(pool, schedule_id, session)
        await pause_schedule(pool, owner, schedule)
        return Redirect("/dashboard/schedules", status_code=303)

    @post("/{schedule_id:uuid}/resume", status_code=303)
    async def resume(
        self,
        *,
        request: Request[Any, Any, State],
        schedule_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
    ) -> Redirect:
        """Fire again from the first run after now, as the JSON API's resume does."""
        await checked_form(request, session)
        schedule, owner = await schedule_owner(pool, schedule_id, session)
        await resume_schedule(pool, owner, schedule)
        return Redirect("/dashboard/schedules", status_code=303)

    @post("/{schedule_id:uuid}/run", status_code=303)
    async def run_now(
        self,
        *,
        request: Request[Any, Any, State],
        schedule_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        relay: NamedDependency[OutboxRelay],
    ) -> Redirect:
        """Enqueue one run now, paused or not; the cadence goes on as it was."""
        await checked_form(request, session)
        schedule, owner = await schedule_owner(pool, schedule_id, session)
        _, task_id = await run_schedule_now(pool, owner, schedule, relay=relay)
        log.info(
            "schedule %s run now from the dashboard by %s: task %s",
            schedule,
            session.user.name,
            task_id,
        )
        return Redirect("/dashboard/schedules", status_code=303)

    @post("/{schedule_id:uuid}/delete", status_code=303)
    async def delete(
        self,
        *,
        request: Request[Any, Any, State],
        schedule_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
    ) -> Redirect:
        await checked_form(request, session)
        schedule, owner = await schedule_owner(pool, schedule_id, session)
        await delete_schedule(pool, owner, schedule)
        log.info("schedule %s deleted from the dashboard by %s", schedule, session.user.name)
        return Redirect("/dashboard/schedules", status_code=303)
