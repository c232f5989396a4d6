"""/api/v1/tasks: enqueue user-defined tasks, follow them, cancel them; /api/v1/task-types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import ServerSentEvent
from opentelemetry import trace
from redis.asyncio import Redis

from services.gateway.auth import User
from services.gateway.errors import InvalidRequest
from services.gateway.live import AfterQuery, LastEventIdHeader, draining, resume_after
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import IdempotencyKey, PageNumber, PerPage, allow_methods, errors
from services.gateway.tasks.cancellation import announce_task_cancels
from services.gateway.tasks.enqueueing import enqueue, enqueue_batch
from services.gateway.tasks.errors import BatchItemRefused, BatchTooLarge
from services.gateway.tasks.live import task_event_stream
from services.gateway.tasks.queries import cancel_task, get_task, list_tasks
from services.gateway.tasks.records import NewTask
from services.gateway.tasks.schemas import (
    MAX_BATCH_TASKS,
    BatchRequest,
    BatchResponse,
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
from shared.task_catalogue import Catalogue, task_types
from shared.task_types import TaskStatus, TaskTypeError, check_arguments
from shared.telemetry import trace_headers

# Where this gateway keeps its Catalogue (one per process, shared by every request).
_CATALOGUE_STATE_KEY = "downlink.tasks.catalogue"

_BATCH_ERRORS = errors(
    400,
    404,
    413,
    422,
    meaning={
        404: "no live worker registered the task of an item; `detail` names it (`tasks[3].task`)",
        413: "more than 1000 tasks, or an item's arguments over 1 MiB as JSON",
        422: "an item's arguments do not match its task's signature; `detail` names the item and"
        " the argument (`tasks[3].args.a`)",
    },
)
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
        state: State,
        idempotency_key: IdempotencyKey = None,
    ) -> EnqueueResponse:
        """Queue a task a live worker registered, its arguments checked against its signature."""
        new = await _new_task(catalogue(state, redis), data, current_user, idempotency_key)
        async with pool.acquire() as connection, connection.transaction():
            enqueued = await enqueue(
                connection, new, trace_id=_trace_id(), trace_headers=trace_headers()
            )
        if not enqueued.existing:
            relay.wake()
        trace.get_current_span().set_attribute("downlink.task_id", enqueued.task_id)
        return enqueue_response(enqueued)

    @post(
        "/batch",
        status_code=202,
        # 1000 tasks of a few KiB of arguments each; one task's own limit is still 1 MiB.
        request_max_body_size=16 * 1024 * 1024,
        responses=_BATCH_ERRORS,
    )
    async def enqueue_batch(
        self,
        *,
        data: JSONBody[BatchRequest],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
        state: State,
    ) -> BatchResponse:
        """Queue up to 1000 tasks in one transaction: all of them, or none when any is refused
        (the error names it: `tasks[3].args.a: ...`). The answers are in the order given."""
        if len(data.tasks) > MAX_BATCH_TASKS:
            raise BatchTooLarge(len(data.tasks), MAX_BATCH_TASKS)
        types = catalogue(state, redis)
        news: list[NewTask] = []
        for index, item in enumerate(data.tasks):
            try:
                news.append(await _new_task(types, item, current_user, item.idempotency_key))
            except TaskTypeError as exc:
                raise BatchItemRefused(index, exc) from None
        async with pool.acquire() as connection, connection.transaction():
            enqueued = await enqueue_batch(
                connection, news, trace_id=_trace_id(), trace_headers=trace_headers()
            )
        if not all(e.existing for e in enqueued):
            relay.wake()
        trace.get_current_span().set_attribute("downlink.task_count", len(enqueued))
        return BatchResponse(tasks=[enqueue_response(e) for e in enqueued])

    allowed_methods = allow_methods("/", "GET, OPTIONS, POST")

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

    @get("/{task_id:uuid}/events", responses=errors(400, 404))
    async def task_events(
        self,
        *,
        task_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        state: State,
        last_event_id: LastEventIdHeader = None,
        after: AfterQuery = None,
    ) -> ServerSentEvent:
        """The task's life as Server-Sent Events until it ends: `task.attempt` (each try as it
        starts and ends), `task.progress`, `task.status`, then `task.finished` with the result
        or error (the task as GET /tasks/{task_id} shows it).

        A resumed stream (Last-Event-ID) starts with the task's current state, then goes on.
        """
        task = str(task_id)
        await get_task(pool, current_user.id, task)  # another user's task: 404, before the 200
        return ServerSentEvent(
            task_event_stream(
                pool,
                current_user.id,
                task,
                after_id=resume_after(last_event_id, after),
                stopping=draining(state),
            )
        )

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
        await announce_task_cancels(redis, [task], ttl_s=settings.retention_s)
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


async def _new_task(
    types: Catalogue, data: EnqueueRequest, user: User, idempotency_key: str | None
) -> NewTask:
    """The task to write, checked against its registered type (UnknownTaskType, 422, 413)."""
    registered = await types.task_type(data.task)
    check_arguments(registered, data.args)
    policy = registered.policy
    return NewTask(
        user_id=user.id,
        task=data.task,
        queue=registered.queue,
        args=data.args,
        priority=data.priority or int(policy.get("priority", 5)),
        run_at=_run_at(data),
        idempotency_key=idempotency_key,
        unique=bool(policy.get("unique", False)),
    )


def _trace_id() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def _run_at(data: EnqueueRequest) -> datetime | None:
    if data.defer_s:
        return datetime.now(UTC) + timedelta(seconds=data.defer_s)
    return data.run_at


def catalogue(state: State, redis: Redis) -> Catalogue:
    """This gateway's Catalogue, made on first use and kept in the application's state."""
    found = state.get(_CATALOGUE_STATE_KEY)
    if not isinstance(found, Catalogue):
        found = Catalogue(redis)
        state[_CATALOGUE_STATE_KEY] = found
    return found
