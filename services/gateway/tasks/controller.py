"""/api/v1/tasks: enqueue user-defined tasks, follow them, cancel them; /api/v1/task-types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, Response, get, post, route
from litestar.di import NamedDependency
from litestar.enums import HttpMethod
from litestar.params import FromPath, JSONBody, QueryParameter
from opentelemetry import trace
from redis.asyncio import Redis

from services.gateway.auth import User
from services.gateway.errors import InvalidRequest
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import IdempotencyKey, PageNumber, PerPage, errors
from services.gateway.tasks.catalogue import check_arguments, task_type, task_types
from services.gateway.tasks.queries import cancel_task, enqueue, get_task, list_tasks
from services.gateway.tasks.records import NewTask, TaskStatus
from services.gateway.tasks.schemas import (
    EnqueueRequest,
    EnqueueResponse,
    TaskCancelResponse,
    TaskListResponse,
    TaskResponse,
    TaskTypeListResponse,
    enqueue_response,
    task_list_response,
    task_response,
    task_types_response,
)
from shared.settings import Settings
from shared.streams import TASK_CANCEL_CHANNEL, task_cancelled_key
from shared.telemetry import trace_headers

_ENQUEUE_ERRORS = errors(
    400,
    404,
    413,
    422,
    meaning={
        404: "no live worker registered a task of that name",
        413: "the arguments are over 1 MiB as JSON",
        422: "the arguments do not match the task's signature; `detail` names the argument",
    },
)


class TasksController(Controller):
    """Tasks of the authenticated user; another user's ids answer 404."""

    path = "/tasks"
    tags = ["tasks"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post("/", status_code=202, request_max_body_size=2 * 1024 * 1024, responses=_ENQUEUE_ERRORS)
    async def enqueue_task(
        self,
        *,
        data: JSONBody[EnqueueRequest],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
        idempotency_key: IdempotencyKey = None,
    ) -> EnqueueResponse:
        """Queue a task a live worker registered, its arguments checked against its signature."""
        registered = await task_type(redis, data.task)
        check_arguments(registered, data.args)
        policy = registered.policy
        new = NewTask(
            user_id=current_user.id,
            task=data.task,
            queue=registered.queue,
            args=data.args,
            priority=data.priority or int(policy.get("priority", 5)),
            run_at=_run_at(data),
            idempotency_key=idempotency_key,
            unique=bool(policy.get("unique", False)),
        )
        span_context = trace.get_current_span().get_span_context()
        trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else None
        async with pool.acquire() as connection, connection.transaction():
            enqueued = await enqueue(
                connection, new, trace_id=trace_id, trace_headers=trace_headers()
            )
        if not enqueued.existing:
            relay.wake()
        trace.get_current_span().set_attribute("downlink.task_id", enqueued.task_id)
        return enqueue_response(enqueued)

    @route("/", http_method=HttpMethod.OPTIONS, include_in_schema=False)
    async def allowed_methods(self) -> Response[None]:
        """The methods of /tasks: Litestar 2.25's own OPTIONS answer names only one handler's
        method on a path that two handlers share."""
        return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, POST"})

    @get("/", responses=errors(400))
    async def list_tasks(
        self,
        *,
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        task: Annotated[str | None, QueryParameter(max_length=200)] = None,
        status: Annotated[
            str | None, QueryParameter(description=f"one of {', '.join(TaskStatus)}")
        ] = None,
        page: PageNumber = 1,
        per_page: PerPage = 20,
    ) -> TaskListResponse:
        """The caller's tasks, newest first."""
        wanted: TaskStatus | None = None
        if status:
            try:
                wanted = TaskStatus(status)
            except ValueError:
                raise InvalidRequest(
                    f"status: {status!r} is not one of {', '.join(TaskStatus)}"
                ) from None
        found = await list_tasks(
            pool, current_user.id, task=task or None, status=wanted, page=page, per_page=per_page
        )
        return task_list_response(found)

    @get("/{task_id:uuid}", responses=errors(400, 404))
    async def task_status(
        self,
        *,
        task_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
    ) -> TaskResponse:
        """Status, tries, progress, result or error (with traceback), worker and trace id."""
        return task_response(await get_task(pool, current_user.id, str(task_id)))

    @post(
        "/{task_id:uuid}/cancel",
        status_code=200,
        responses=errors(400, 404, 409, meaning={409: "the task already ended"}),
    )
    async def cancel(
        self,
        *,
        task_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        settings: NamedDependency[Settings],
    ) -> TaskCancelResponse:
        """Cancel a task that has not ended: a queued run is skipped, a running one aborted."""
        task = str(task_id)
        async with pool.acquire() as connection, connection.transaction():
            await cancel_task(connection, current_user.id, task)
        # After the commit: PostgreSQL is the record; the flag and the message only hurry it.
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(task_cancelled_key(task), b"1", ex=settings.retention_s)
            pipe.publish(TASK_CANCEL_CHANNEL, task)
            await pipe.execute()
        return TaskCancelResponse(task_id=task, status=TaskStatus.CANCELLED)


class TaskTypesController(Controller):
    """What the live task workers can run."""

    path = "/task-types"
    tags = ["tasks"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get("/", responses=errors())
    async def list_task_types(self, *, redis: NamedDependency[Redis]) -> TaskTypeListResponse:
        """Each task a live worker registered: name, queue, policy and argument JSON schema.

        One name registered with different policies by different workers is listed once per
        definition (and the gateway logs a warning).
        """
        return task_types_response(await task_types(redis))


def _run_at(data: EnqueueRequest) -> datetime | None:
    if data.defer_s:
        return datetime.now(UTC) + timedelta(seconds=data.defer_s)
    return data.run_at
