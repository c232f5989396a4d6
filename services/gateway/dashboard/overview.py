"""/dashboard: jobs and tasks by state, the last hour's throughput and time in queue per lane;
lanes' depth and workers (admins)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from asyncpg import Pool
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.response import Template
from redis.asyncio import Redis

from services.gateway.dashboard.chart import sparkline
from services.gateway.dashboard.queries import count_by_status, queue_waits, throughput
from services.gateway.dashboard.sessions import DashboardSession
from shared.queues import queue_report
from shared.statuses import JobStatus
from shared.streams import GROUPS
from shared.workers import list_workers

_SECONDS_PER_MINUTE = 60
_TASK_STATUSES = ("pending", "running", "completed", "failed", "cancelled", "dead")


class OverviewController(Controller):
    """The first screen after signing in."""

    path = "/"

    @get("/")
    async def overview(
        self,
        *,
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
    ) -> Template:
        user = session.user
        owner = None if user.is_admin else user.id
        jobs = await count_by_status(pool, "jobs", owner)
        tasks = await count_by_status(pool, "tasks", owner)
        per_minute = await throughput(pool, owner)
        context: dict[str, Any] = {
            "session": session,
            "page": "overview",
            "jobs": [(status.value, jobs.get(status, 0)) for status in JobStatus],
            "tasks": [(status, tasks.get(status, 0)) for status in _TASK_STATUSES],
            "files_chart": sparkline([files / _SECONDS_PER_MINUTE for files, _ in per_minute]),
            "mb_chart": sparkline([b / _SECONDS_PER_MINUTE / 1e6 for _, b in per_minute]),
            "waits": await queue_waits(pool, owner),
        }
        if user.is_admin:
            context |= await _operations(redis)
        return Template("overview.html", context=context)


async def _operations(redis: Redis) -> dict[str, Any]:
    """What only admins see: every lane's depth, the live workers and the dead letters."""
    report = await queue_report(redis, GROUPS)
    now = datetime.now(UTC)
    workers = [
        (worker, (now - worker.last_heartbeat).total_seconds())
        for worker in await list_workers(redis)
    ]
    return {"queues": report.queues, "dead_letters": report.dead_letters, "workers": workers}
