"""/api/v1/workers, /queues and /executions: what every service is doing, and what it did."""

from __future__ import annotations

from typing import Annotated, TypeVar
from uuid import UUID

import msgspec
from asyncpg import Pool
from litestar import Controller, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from redis.asyncio import Redis

from services.gateway import history
from services.gateway.auth import admin_guard
from services.gateway.controllers.responses import errors
from services.gateway.errors import InvalidRequest
from services.gateway.history import ExecutionListResponse, ExecutionStatus, Task
from services.gateway.repository import User
from services.gateway.resources import provide_pool, provide_redis
from services.gateway.schemas import MAX_PAGE
from shared.ids import JobId
from shared.queues import QueueReport, queue_report
from shared.streams import GROUPS
from shared.workers import WorkerInfo, list_workers

_ADMINS_ONLY = errors(403, meaning={403: "the caller is not an admin"})


# Kept beside its one route rather than in schemas.py: an answer assembled from shared records.
class WorkerListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Every live service process; one that stopped heartbeating is gone within 30 s."""

    workers: list[WorkerInfo]


class OperationsController(Controller):
    """Workers and queues for admins; the execution history for everyone (their own runs)."""

    path = "/"
    tags = ["operations"]  # noqa: RUF012 - Litestar reads this class attribute as is
    dependencies = {  # noqa: RUF012
        "redis": Provide(provide_redis, sync_to_thread=False),
        "pool": Provide(provide_pool, sync_to_thread=False),
    }
    signature_namespace = {"Redis": Redis, "Pool": Pool, "User": User}  # noqa: RUF012

    @get("/workers", guards=[admin_guard], responses=_ADMINS_ONLY)
    async def workers(self, *, redis: NamedDependency[Redis]) -> WorkerListResponse:
        """Live workers: service, consumer name, host, pid, start, last heartbeat, counters."""
        return WorkerListResponse(workers=await list_workers(redis))

    @get("/queues", guards=[admin_guard], responses=_ADMINS_ONLY)
    async def queues(self, *, redis: NamedDependency[Redis]) -> QueueReport:
        """Per stream and group: length, pending, lag, oldest pending age; dead letters."""
        return await queue_report(redis, GROUPS)

    @get("/executions", responses=errors(400))
    async def executions(
        self,
        *,
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        job_id: Annotated[UUID | None, QueryParameter(description="only this job's runs")] = None,
        status: Annotated[
            str | None,
            QueryParameter(description=f"one of {', '.join(ExecutionStatus)}; empty for all"),
        ] = None,
        task: Annotated[
            str | None, QueryParameter(description=f"one of {', '.join(Task)}; empty for all")
        ] = None,
        page: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 1,
        per_page: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    ) -> ExecutionListResponse:
        """Task runs, newest first: each try of each task with its worker, outcome and timing.

        A user sees the runs of their own jobs and exports; an admin sees every run.
        """
        return await history.list_executions(
            pool,
            current_user,
            job_id=None if job_id is None else JobId(str(job_id)),
            status=_choice(ExecutionStatus, "status", status),
            task=_choice(Task, "task", task),
            page=page,
            per_page=per_page,
        )


_Choice = TypeVar("_Choice", ExecutionStatus, Task)


def _choice(enum: type[_Choice], name: str, value: str | None) -> _Choice | None:
    if not value:
        return None
    try:
        return enum(value)
    except ValueError:
        raise InvalidRequest(f"{name}: {value!r} is not one of {', '.join(enum)}") from None
