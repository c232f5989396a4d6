"""/dashboard/workflows: the paged list, one workflow's page (its steps as a graph and a table,
its artifacts), the artifacts' bytes and the cancel button.

Users see their own workflows; admins see everyone's; another user's id answers 404. Reading
and cancelling are the JSON API's own functions (workflows.queries, workflows.cancellation).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import PurePosixPath
from typing import Annotated, Any
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter, SkipValidation
from litestar.response import Redirect, Stream, Template
from redis.asyncio import Redis

from services.gateway.dashboard import task_queries
from services.gateway.dashboard.sessions import DashboardSession, checked_form
from services.gateway.dashboard.step_graph import layout
from services.gateway.dashboard.task_filters import parse_workflow_status
from services.gateway.errors import NotFound
from services.gateway.files import attachment
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import PageNumber
from services.gateway.workflows.artifacts import artifact_named
from services.gateway.workflows.cancellation import stop_workflow
from services.gateway.workflows.errors import WorkflowNotFound
from services.gateway.workflows.queries import get_workflow
from services.gateway.workflows.records import FINAL_WORKFLOW_STATUSES, WorkflowStatus
from services.gateway.workflows.schemas import workflow_response
from shared.ids import UserId
from shared.settings import Settings
from shared.storage import Storage, StorageError, read_open
from shared.telemetry import trace_headers

log = logging.getLogger(__name__)

WORKFLOWS_PER_PAGE = 25


async def workflow_owner(
    pool: Pool, workflow_id: UUID, session: DashboardSession
) -> tuple[str, UserId]:
    """The workflow and its owner, if the signed-in person may see it; 404 otherwise."""
    workflow = str(workflow_id)
    user = session.user
    viewer = None if user.is_admin else user.id
    owner = await task_queries.owner_in(pool, "workflows", workflow, viewer)
    if owner is None:
        raise WorkflowNotFound(workflow)
    return workflow, owner


class DashboardWorkflowsController(Controller):
    """The workflows screens, their artifacts and the cancel button."""

    path = "/workflows"

    @get("/")
    async def workflows(
        self,
        *,
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        status: Annotated[str | None, QueryParameter(max_length=20)] = None,
        page: PageNumber = 1,
    ) -> Template:
        wanted = parse_workflow_status(status)
        owner = None if session.user.is_admin else session.user.id
        rows, total = await task_queries.list_workflows(
            pool, owner, wanted, page=page, per_page=WORKFLOWS_PER_PAGE
        )
        return Template(
            "workflows.html",
            context={
                "session": session,
                "page": "workflows",
                "workflows": rows,
                "total": total,
                "status": wanted,
                "statuses": list(WorkflowStatus),
                "page_number": page,
                "pages": max(1, -(-total // WORKFLOWS_PER_PAGE)),
                "query": f"status={wanted}&" if wanted else "",
            },
        )

    @get("/{workflow_id:uuid}")
    async def workflow(
        self,
        *,
        workflow_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
    ) -> Template:
        workflow, owner = await workflow_owner(pool, workflow_id, session)
        record = await get_workflow(pool, owner, workflow)
        links = {
            step.key: f"/dashboard/tasks/{step.task_id}"
            if step.task_id
            else f"/dashboard/jobs/{step.job_id}"
            for step in record.steps
            if step.task_id or step.job_id
        }
        return Template(
            "workflow.html",
            context={
                "session": session,
                "page": "workflows",
                "workflow": workflow_response(record),
                "graph": layout(record.steps, link=links),
                "links": links,
                "ended": record.status in FINAL_WORKFLOW_STATUSES,
            },
        )

    @get("/{workflow_id:uuid}/artifacts/{name:path}")
    async def artifact(
        self,
        *,
        workflow_id: FromPath[UUID],
        name: FromPath[str],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        storage: NamedDependency[SkipValidation[Storage]],
    ) -> Stream:
        """The bytes of one file a step made, as the JSON API's artifact route serves them."""
        workflow, owner = await workflow_owner(pool, workflow_id, session)
        async with pool.acquire() as connection:
            found = await artifact_named(connection, owner, workflow, name.lstrip("/"))
        try:
            source = await asyncio.to_thread(storage.open_verified, found["key"], found["size"])
        except StorageError:
            raise NotFound(f"artifact {found['name']!r} is no longer in storage") from None
        return Stream(
            read_open(source),
            media_type=found.get("media_type") or "application/octet-stream",
            headers={
                "Content-Length": str(found["size"]),
                "ETag": f'"{found["sha256"]}"',
                "Content-Disposition": attachment(PurePosixPath(found["name"]).name),
            },
        )

    @post("/{workflow_id:uuid}/cancel", status_code=303)
    async def cancel(
        self,
        *,
        request: Request[Any, Any, State],
        workflow_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
        settings: NamedDependency[Settings],
    ) -> Redirect:
        await checked_form(request, session)
        workflow, owner = await workflow_owner(pool, workflow_id, session)
        await stop_workflow(
            pool,
            owner,
            workflow,
            redis=redis,
            relay=relay,
            ttl_s=settings.retention_s,
            trace_headers=trace_headers(),
        )
        log.info("workflow %s cancelled from the dashboard by %s", workflow, session.user.name)
        return Redirect(f"/dashboard/workflows/{workflow}", status_code=303)
