"""/api/v1/workers, /queues and /executions: what every service is doing, and what it did;
and /metrics, the same for Prometheus."""

from __future__ import annotations

from typing import Annotated, TypeVar
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from redis.asyncio import Redis

from services.gateway.auth import User, admin_guard
from services.gateway.errors import InvalidRequest
from services.gateway.executions import monitoring
from services.gateway.executions.history import ExecutionStatus, Task
from services.gateway.executions.queries import list_executions
from services.gateway.executions.schemas import (
    ExecutionListResponse,
    WorkerListResponse,
    execution_list_response,
)
from services.gateway.responses import PageNumber, PerPage, errors
from shared import metrics
from shared.ids import JobId
from shared.queues import QueueReport, queue_report
from shared.streams import GROUPS
from shared.workers import list_workers

_ADMINS_ONLY = errors(403, meaning={403: "the caller is not an admin"})


class OperationsController(Controller):
    """Workers and queues for admins; the execution history for everyone (their own runs)."""

    path = "/"
    tags = ["operations"]  # noqa: RUF012 - Litestar reads this class attribute as is

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
        page: PageNumber = 1,
        per_page: PerPage = 20,
    ) -> ExecutionListResponse:
        """Task runs, newest first: each try of each task with its worker, outcome and timing.

        A user sees the runs of their own jobs and exports; an admin sees every run.
        """
        executions = await list_executions(
            pool,
            current_user,
            job_id=None if job_id is None else JobId(str(job_id)),
            status=_choice(ExecutionStatus, "status", status),
            task=_choice(Task, "task", task),
            page=page,
            per_page=per_page,
        )
        return execution_list_response(executions)


class MetricsController(Controller):
    """GET /metrics: Prometheus text, without authentication (like /health), for scrapers: the
    gateway's metrics, and the queues', workers' and jobs' gauges read at each scrape."""

    path = "/"
    tags = ["system"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get("/metrics", include_in_schema=False)
    async def scrape(
        self, *, redis: NamedDependency[Redis], pool: NamedDependency[Pool]
    ) -> Response[bytes]:
        """Prometheus text exposition format."""
        await monitoring.refresh(pool, redis)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


_Choice = TypeVar("_Choice", ExecutionStatus, Task)


def _choice(enum: type[_Choice], name: str, value: str | None) -> _Choice | None:
    if not value:
        return None
    try:
        return enum(value)
    except ValueError:
        raise InvalidRequest(f"{name}: {value!r} is not one of {', '.join(enum)}") from None
