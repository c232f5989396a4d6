"""/dashboard/tasks: the filtered, paged list, one task's page, its live events, its cancel.

Users see their own tasks; admins see everyone's. Another user's task id answers 404, as the
JSON API does. The cancel is the JSON API's (tasks.queries.cancel_task, then the workers told).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, ServerSentEvent, Template
from redis.asyncio import Redis

from services.gateway.dashboard import task_queries
from services.gateway.dashboard.bulk import bulk_outcome
from services.gateway.dashboard.sessions import DashboardSession, checked_form
from services.gateway.dashboard.task_filters import parse_task_filter
from services.gateway.live import AfterQuery, LastEventIdHeader, draining, resume_after
from services.gateway.responses import PageNumber
from services.gateway.tasks.cancellation import announce_task_cancels
from services.gateway.tasks.errors import TaskNotFound
from services.gateway.tasks.live import task_event_stream
from services.gateway.tasks.queries import cancel_task, get_task
from services.gateway.tasks.records import OPEN_STATUSES
from services.gateway.tasks.schemas import task_response
from shared.ids import UserId
from shared.settings import Settings
from shared.task_types import TaskStatus

log = logging.getLogger(__name__)

TASKS_PER_PAGE = 25


async def task_owner(pool: Pool, task_id: UUID, session: DashboardSession) -> tuple[str, UserId]:
    """The task and its owner, if the signed-in person may see it; TaskNotFound otherwise."""
    task = str(task_id)
    user = session.user
    owner = await task_queries.owner_in(pool, "tasks", task, None if user.is_admin else user.id)
    if owner is None:
        raise TaskNotFound(task)
    return task, owner


class DashboardTasksController(Controller):
    """The tasks screens and the cancel button."""

    path = "/tasks"

    @get("/")
    async def tasks(
        self,
        *,
        request: Request[Any, Any, State],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        page: PageNumber = 1,
    ) -> Template:
        params = {name: value for name, value in request.query_params.items() if name != "page"}
        wanted = parse_task_filter(params, admin=session.user.is_admin)
        owner = None if session.user.is_admin else session.user.id
        rows, total = await task_queries.list_tasks(
            pool, owner, wanted, page=page, per_page=TASKS_PER_PAGE
        )
        query = urlencode(wanted.query())
        return Template(
            "tasks.html",
            context={
                "session": session,
                "page": "tasks",
                "tasks": rows,
                "total": total,
                "filter": wanted,
                "statuses": list(TaskStatus),
                "page_number": page,
                "pages": max(1, -(-total // TASKS_PER_PAGE)),
                "query": f"{query}&" if query else "",
                "outcome": bulk_outcome(request.query_params),
            },
        )

    @get("/{task_id:uuid}")
    async def task(
        self,
        *,
        task_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
    ) -> Template:
        task, owner = await task_owner(pool, task_id, session)
        record = await get_task(pool, owner, task)
        return Template(
            "task.html",
            context={
                "session": session,
                "page": "tasks",
                "task": task_response(record),
                "tries": await task_queries.task_tries(pool, task),
                "ended": record.status not in OPEN_STATUSES,
            },
        )

    @get("/{task_id:uuid}/events")
    async def task_events(
        self,
        *,
        task_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        state: State,
        last_event_id: LastEventIdHeader = None,
        after: AfterQuery = None,
    ) -> ServerSentEvent:
        """The JSON API's event stream of the task, signed in by the session cookie."""
        task, owner = await task_owner(pool, task_id, session)
        return ServerSentEvent(
            task_event_stream(
                pool,
                owner,
                task,
                after_id=resume_after(last_event_id, after),
                stopping=draining(state),
            )
        )

    @post("/{task_id:uuid}/cancel", status_code=303)
    async def cancel(
        self,
        *,
        request: Request[Any, Any, State],
        task_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        settings: NamedDependency[Settings],
    ) -> Redirect:
        await checked_form(request, session)
        task, owner = await task_owner(pool, task_id, session)
        async with pool.acquire() as connection, connection.transaction():
            await cancel_task(connection, owner, task)
        # After the commit: PostgreSQL is the record; the flag and the message only hurry it.
        await announce_task_cancels(redis, [task], ttl_s=settings.retention_s)
        log.info("task %s cancelled from the dashboard by %s", task, session.user.name)
        return Redirect(f"/dashboard/tasks/{task}", status_code=303)
