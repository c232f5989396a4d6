"""The lists' bulk buttons: retry or cancel every task, or every job, the list's filter matches.

Each is a form POST carrying the session's CSRF token, the filter in hidden fields and a ticked
confirmation; it acts on the signed-in person's own rows (admins: everyone's, or the filtered
user's) through the JSON API's own functions, then redirects back to the list with its counts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from asyncpg import Pool
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Redirect
from redis.asyncio import Redis

from services.gateway.dashboard.filters import parse_job_filter
from services.gateway.dashboard.sessions import DashboardSession, checked_form
from services.gateway.dashboard.task_filters import parse_task_filter
from services.gateway.errors import InvalidRequest
from services.gateway.jobs.cancellation import cancel_jobs_matching
from services.gateway.outbox import OutboxRelay
from services.gateway.retries.controller import retry_jobs_matching, retry_tasks_matching
from services.gateway.tasks.cancellation import cancel_tasks_matching
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from litestar.datastructures import FormMultiDict

    from shared.ids import UserId

log = logging.getLogger(__name__)

# Rows per click: the redirect says how many matching rows are left for the next one.
BULK_LIMIT = 1000
_OUTCOME_FIELDS = ("retried_jobs", "retried", "cancelled", "skipped", "remaining")


def bulk_outcome(params: Mapping[str, str]) -> dict[str, int]:
    """The counts a bulk button's redirect put in the list's query string, for its notice."""
    return {name: int(params[name]) for name in _OUTCOME_FIELDS if params.get(name, "").isdigit()}


async def _confirmed(
    request: Request[Any, Any, State], session: DashboardSession
) -> dict[str, str]:
    """The form's text fields, once it carried the CSRF token (403) and a ticked box (400)."""
    form: FormMultiDict = await checked_form(request, session)
    if form.get("confirm") != "yes":
        raise InvalidRequest("confirm: tick the box to act on every matching row")
    return {name: value for name, value in form.items() if isinstance(value, str)}


def _owner(session: DashboardSession) -> UserId | None:
    return None if session.user.is_admin else session.user.id


def _back(list_path: str, query: dict[str, str], **outcome: int) -> Redirect:
    return Redirect(f"{list_path}?{urlencode({**query, **outcome})}", status_code=303)


class BulkActionsController(Controller):
    """Retry all failed matching, cancel all matching: on the tasks list and the jobs list."""

    path = "/"

    @post("/tasks/retry-matching", status_code=303)
    async def retry_tasks(
        self,
        *,
        request: Request[Any, Any, State],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
    ) -> Redirect:
        form = await _confirmed(request, session)
        wanted = parse_task_filter(form, admin=session.user.is_admin)
        outcome = await retry_tasks_matching(
            _owner(session), wanted, limit=BULK_LIMIT, pool=pool, redis=redis, relay=relay
        )
        log.info("%s retried %d tasks from the dashboard", session.user.name, outcome.requeued)
        return _back(
            "/dashboard/tasks",
            wanted.query(),
            retried=outcome.requeued,
            skipped=len(outcome.skipped),
            remaining=outcome.remaining,
        )

    @post("/tasks/cancel-matching", status_code=303)
    async def cancel_tasks(
        self,
        *,
        request: Request[Any, Any, State],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        settings: NamedDependency[Settings],
    ) -> Redirect:
        form = await _confirmed(request, session)
        wanted = parse_task_filter(form, admin=session.user.is_admin)
        outcome = await cancel_tasks_matching(
            _owner(session),
            wanted,
            limit=BULK_LIMIT,
            pool=pool,
            redis=redis,
            ttl_s=settings.retention_s,
        )
        log.info("%s cancelled %d tasks from the dashboard", session.user.name, outcome.cancelled)
        return _back(
            "/dashboard/tasks",
            wanted.query(),
            cancelled=outcome.cancelled,
            remaining=outcome.remaining,
        )

    @post("/jobs/retry-matching", status_code=303)
    async def retry_jobs(
        self,
        *,
        request: Request[Any, Any, State],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
    ) -> Redirect:
        form = await _confirmed(request, session)
        wanted = parse_job_filter(form, admin=session.user.is_admin)
        outcome = await retry_jobs_matching(
            _owner(session), wanted, limit=BULK_LIMIT, pool=pool, redis=redis, relay=relay
        )
        log.info("%s retried %d files from the dashboard", session.user.name, outcome.requeued)
        return _back(
            "/dashboard/jobs",
            wanted.query(),
            retried_jobs=outcome.jobs,
            retried=outcome.requeued,
            skipped=outcome.skipped,
            remaining=outcome.remaining,
        )

    @post("/jobs/cancel-matching", status_code=303)
    async def cancel_jobs(
        self,
        *,
        request: Request[Any, Any, State],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
        settings: NamedDependency[Settings],
    ) -> Redirect:
        form = await _confirmed(request, session)
        wanted = parse_job_filter(form, admin=session.user.is_admin)
        outcome = await cancel_jobs_matching(
            _owner(session),
            wanted,
            reason=f"cancelled from the dashboard by {session.user.name}",
            limit=BULK_LIMIT,
            pool=pool,
            redis=redis,
            relay=relay,
            ttl_s=settings.retention_s,
        )
        log.info("%s cancelled %d jobs from the dashboard", session.user.name, outcome.cancelled)
        return _back(
            "/dashboard/jobs",
            wanted.query(),
            cancelled=outcome.cancelled,
            remaining=outcome.remaining,
        )
