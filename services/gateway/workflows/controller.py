"""/api/v1/workflows: submit a workflow (by name or as a DAG), follow it, cancel it."""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from typing import Annotated
from uuid import UUID

import msgspec
from asyncpg import Pool
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter, SkipValidation
from litestar.response import Stream
from opentelemetry import trace
from redis.asyncio import Redis

from services.gateway.auth import User
from services.gateway.errors import InvalidRequest, NotFound
from services.gateway.exports.records import CreatedExport
from services.gateway.exports.schemas import ExportCreateResponse, export_created_response
from services.gateway.files import attachment
from services.gateway.jobs.specs import SubmitRequest
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import IdempotencyKey, PageNumber, PerPage, allow_methods, errors
from services.gateway.tasks.controller import catalogue
from services.gateway.workflows.artifacts import artifact_named, export_workflow
from services.gateway.workflows.cancellation import stop_workflow
from services.gateway.workflows.errors import WorkflowRefused
from services.gateway.workflows.queries import get_workflow, list_workflows
from services.gateway.workflows.records import WorkflowStatus
from services.gateway.workflows.schemas import (
    SubmitWorkflowResponse,
    WorkflowCancelResponse,
    WorkflowExportRequest,
    WorkflowListResponse,
    WorkflowRequest,
    WorkflowResponse,
    workflow_list_response,
    workflow_response,
)
from services.gateway.workflows.submission import submit_workflow
from shared.settings import Settings
from shared.storage import Storage, StorageError, read_open
from shared.telemetry import trace_headers
from shared.workflows import (
    DOWNLOAD,
    Lookup,
    ResolvedStep,
    StepSpec,
    UnknownStepTask,
    WorkflowInvalid,
    WorkflowSpec,
    named_step_key,
    resolve,
)

_SUBMIT_ERRORS = errors(
    400,
    404,
    422,
    meaning={
        404: "no live worker registered the workflow, or a step's task; `detail` names it",
        422: "a cycle, a dependency on no step, or a step's arguments that do not fit its task;"
        " `detail` names the field (`steps[2].after`)",
    },
)


class WorkflowsController(Controller):
    """Workflows of the authenticated user; another user's ids answer 404."""

    path = "/workflows"
    tags = ["workflows"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post("/", status_code=202, request_max_body_size=16 * 1024 * 1024, responses=_SUBMIT_ERRORS)
    async def submit(
        self,
        *,
        data: JSONBody[WorkflowRequest],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
        state: State,
        idempotency_key: IdempotencyKey = None,
    ) -> SubmitWorkflowResponse:
        """Record the workflow as a DAG and queue its first steps, in one transaction."""
        steps = await _resolved(data, catalogue(state, redis).task_type)
        span = trace.get_current_span().get_span_context()
        async with pool.acquire() as connection, connection.transaction():
            submitted = await submit_workflow(
                connection,
                user_id=current_user.id,
                name=data.workflow,
                args=data.args,
                steps=steps,
                allow_partial=data.allow_partial,
                idempotency_key=idempotency_key,
                trace_id=format(span.trace_id, "032x") if span.is_valid else None,
                trace_headers=trace_headers(),
            )
        if not submitted.existing:
            relay.wake()
        trace.get_current_span().set_attribute("downlink.workflow_id", submitted.workflow_id)
        return SubmitWorkflowResponse(
            workflow_id=submitted.workflow_id,
            status=WorkflowStatus.RUNNING,
            steps=len(steps),
            existing=submitted.existing,
        )

    allowed_methods = allow_methods("/", "GET, OPTIONS, POST")

    @get("/", responses=errors(400))
    async def list_workflows(
        self,
        *,
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        status: Annotated[
            str | None, QueryParameter(description=f"one of {', '.join(WorkflowStatus)}")
        ] = None,
        page: PageNumber = 1,
        per_page: PerPage = 20,
    ) -> WorkflowListResponse:
        """The caller's workflows, newest first."""
        wanted: WorkflowStatus | None = None
        if status:
            try:
                wanted = WorkflowStatus(status)
            except ValueError:
                raise InvalidRequest(
                    f"status: {status!r} is not one of {', '.join(WorkflowStatus)}"
                ) from None
        found, total = await list_workflows(
            pool, current_user.id, status=wanted, page=page, per_page=per_page
        )
        return workflow_list_response(found, page=page, per_page=per_page, total=total)

    @get("/{workflow_id:uuid}", responses=errors(400, 404))
    async def workflow_status(
        self,
        *,
        workflow_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
    ) -> WorkflowResponse:
        """Each step's state, timings, attempts, result and error; the workflow's result and
        every artifact its steps made."""
        return workflow_response(await get_workflow(pool, current_user.id, str(workflow_id)))

    @get("/{workflow_id:uuid}/artifacts/{name:path}", responses=errors(400, 404))
    async def artifact(
        self,
        *,
        workflow_id: FromPath[UUID],
        name: FromPath[str],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        storage: NamedDependency[SkipValidation[Storage]],
    ) -> Stream:
        """The bytes of one file a step made, by the name its step listed it under."""
        async with pool.acquire() as connection:
            found = await artifact_named(
                connection, current_user.id, str(workflow_id), name.lstrip("/")
            )
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

    @post("/{workflow_id:uuid}/export", status_code=202, responses=errors(400, 404, 409))
    async def export(
        self,
        *,
        workflow_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        relay: NamedDependency[OutboxRelay],
        storage: NamedDependency[SkipValidation[Storage]],
        data: JSONBody[WorkflowExportRequest | None] = None,
    ) -> ExportCreateResponse:
        """Queue one archive of the workflow's artifacts and downloaded files, with a manifest
        and a STAC ItemCollection; follow it at /api/v1/downloads/exports/{export_id}."""
        async with pool.acquire() as connection, connection.transaction():
            export_id, selection = await export_workflow(
                connection,
                current_user.id,
                str(workflow_id),
                export_format=data.format if data else "zip",
                storage=storage,
            )
        relay.wake()
        return export_created_response(
            CreatedExport(
                export_id=export_id,
                file_count=len(selection.items),
                total_bytes=selection.total_bytes,
            )
        )

    @post(
        "/{workflow_id:uuid}/cancel",
        status_code=200,
        responses=errors(400, 404, 409, meaning={409: "the workflow already ended"}),
    )
    async def cancel(
        self,
        *,
        workflow_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
        settings: NamedDependency[Settings],
    ) -> WorkflowCancelResponse:
        """Cancel every queued and running step; the steps not started never start."""
        workflow = str(workflow_id)
        await stop_workflow(
            pool,
            current_user.id,
            workflow,
            redis=redis,
            relay=relay,
            ttl_s=settings.retention_s,
            trace_headers=trace_headers(),
        )
        return WorkflowCancelResponse(workflow_id=workflow, status=WorkflowStatus.CANCELLED)


async def _resolved(data: WorkflowRequest, lookup: Lookup) -> list[ResolvedStep]:
    """The request's steps checked against the live task types: 422 or 404 naming the field."""
    if data.workflow is not None:
        key = named_step_key(data.workflow)
        spec = WorkflowSpec(steps=[StepSpec(key=key, task=data.workflow, args=data.args)])
    else:
        spec = WorkflowSpec(steps=data.steps or [], allow_partial=data.allow_partial)
    try:
        steps = await resolve(spec, lookup)
    except UnknownStepTask as exc:
        message = str(exc)
        if data.workflow is not None:
            message = "workflow: " + message.split(": ", 1)[1]
        raise WorkflowRefused(message, status_code=404) from None
    except WorkflowInvalid as exc:
        raise WorkflowRefused(str(exc)) from None
    for i, step in enumerate(steps):
        if step.task == DOWNLOAD and step.input is None:
            _check_job_body(i, step)
    return steps


def _check_job_body(index: int, step: ResolvedStep) -> None:
    """A download step given its files: its job body checked now, not when it launches."""
    try:
        msgspec.convert(step.args, SubmitRequest)
    except msgspec.ValidationError as exc:
        raise WorkflowRefused(f"steps[{index}].args: {exc}") from None
