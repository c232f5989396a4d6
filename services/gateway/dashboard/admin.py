"""/dashboard/queues, /workers and /dead-letters: the operators' screens, for admins only.

Every button is a form POST carrying the CSRF token; each calls the JSON API's own functions
(queues_purge, dead_letters) and redirects back with what it did, so a reload never repeats it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from asyncpg import Pool
from faststream.redis import RedisBroker
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath
from litestar.response import Redirect, Template
from redis.asyncio import Redis

from services.gateway.dashboard.filters import moment_field
from services.gateway.dashboard.sessions import DashboardSession, checked_form
from services.gateway.dead_letters import letters
from services.gateway.dead_letters.bulk import MAX_LIMIT, LetterSelection, discard_many, retry_many
from services.gateway.dead_letters.filters import LetterFilter, LetterKind, letter_page
from services.gateway.dead_letters.schemas import letter_list_response
from services.gateway.errors import DeadLetterNotFound, InvalidRequest
from services.gateway.outbox import OutboxRelay
from services.gateway.queues_purge import purge_queue
from services.gateway.responses import PageNumber
from shared.queues import queue_report
from shared.settings import Settings
from shared.streams import GROUPS, TASKS_GROUP, task_lanes
from shared.task_catalogue import task_types
from shared.workers import EXPIRY_S, HEARTBEAT_S, list_workers

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

LETTERS_PER_PAGE = 25
# Two beats missed: the worker is hung or cut off, though its entry has not expired yet.
STALE_AFTER_S = 2 * HEARTBEAT_S
_TEXT_FIELDS = ("error", "job_id", "task")
_MOMENT_FIELDS = ("failed_after", "failed_before")
_MAX_TEXT = 200


async def provide_admin(session: NamedDependency[DashboardSession]) -> DashboardSession:
    """The session, if its person is an admin; 403 for anyone else."""
    if not session.user.is_admin:
        raise PermissionDeniedException("this page is for admins")
    return session


_ADMIN = {"admin": Provide(provide_admin)}


def parse_letter_filter(params: Mapping[str, Any]) -> LetterFilter:
    """The dead-letter filter of a query string or a bulk form; a bad value is a 400."""
    cleaned = {
        name: value.strip()
        for name in ("kind", *_TEXT_FIELDS, *_MOMENT_FIELDS)
        if isinstance(value := params.get(name), str) and value.strip()
    }
    kind = cleaned.get("kind")
    if kind is not None and kind not in set(LetterKind):
        raise InvalidRequest(f"kind: {kind!r} is not one of {', '.join(LetterKind)}")
    for name in _TEXT_FIELDS:
        if len(cleaned.get(name, "")) > _MAX_TEXT:
            raise InvalidRequest(f"{name}: at most {_MAX_TEXT} characters")
    return LetterFilter(
        kind=LetterKind(kind) if kind else None,
        error=cleaned.get("error"),
        job_id=cleaned.get("job_id"),
        task=cleaned.get("task"),
        failed_after=moment_field("failed_after", cleaned.get("failed_after")),
        failed_before=moment_field("failed_before", cleaned.get("failed_before")),
    )


def filter_query(letter_filter: LetterFilter) -> dict[str, str]:
    """The filter as the fields of the form that set it."""
    values: dict[str, Any] = {
        "kind": letter_filter.kind,
        "error": letter_filter.error,
        "job_id": letter_filter.job_id,
        "task": letter_filter.task,
    }
    for name in _MOMENT_FIELDS:
        moment = getattr(letter_filter, name)
        values[name] = moment and moment.strftime("%Y-%m-%dT%H:%M")
    return {name: str(value) for name, value in values.items() if value is not None}


def _back_to_letters(letter_filter: LetterFilter, **outcome: int) -> Redirect:
    query = urlencode({**filter_query(letter_filter), **outcome})
    return Redirect(f"/dashboard/dead-letters?{query}", status_code=303)


class QueuesScreenController(Controller):
    """Every stream and group, and a purge per task queue."""

    path = "/queues"
    dependencies = _ADMIN

    @get("/")
    async def queues(
        self,
        *,
        request: Request[Any, Any, State],
        admin: NamedDependency[DashboardSession],
        redis: NamedDependency[Redis],
    ) -> Template:
        task_queues = sorted({task_type.queue for task_type in await task_types(redis)})
        lanes = tuple(lane for queue in task_queues for lane in task_lanes(queue))
        report = await queue_report(redis, {**GROUPS, TASKS_GROUP: lanes} if lanes else GROUPS)
        purged = request.query_params.get("purged")
        return Template(
            "queues.html",
            context={
                "session": admin,
                "page": "queues",
                "report": report,
                "task_queues": task_queues,
                "purged": purged,
                "count": request.query_params.get("count", "0") if purged else None,
            },
        )

    @post("/{queue:str}/purge", status_code=303)
    async def purge(
        self,
        *,
        request: Request[Any, Any, State],
        queue: FromPath[str],
        admin: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        settings: NamedDependency[Settings],
    ) -> Redirect:
        form = await checked_form(request, admin)
        if form.get("confirm") != "yes":
            raise InvalidRequest("confirm: tick the box to purge the queue")
        purged = await purge_queue(
            queue, user=admin.user, pool=pool, redis=redis, ttl_s=settings.retention_s
        )
        query = urlencode({"purged": queue, "count": purged})
        return Redirect(f"/dashboard/queues?{query}", status_code=303)


class WorkersScreenController(Controller):
    """The live workers; the page refreshes itself (static/workers.js)."""

    path = "/workers"
    dependencies = _ADMIN

    @get("/")
    async def workers(
        self, *, admin: NamedDependency[DashboardSession], redis: NamedDependency[Redis]
    ) -> Template:
        now = datetime.now(UTC)
        rows = [
            (worker, (now - worker.last_heartbeat).total_seconds())
            for worker in await list_workers(redis)
        ]
        return Template(
            "workers.html",
            context={
                "session": admin,
                "page": "workers",
                "workers": rows,
                "stale_after_s": STALE_AFTER_S,
                "expiry_s": EXPIRY_S,
            },
        )


class DeadLettersScreenController(Controller):
    """The dead letters, filtered; retry or discard one, or all that match the filter."""

    path = "/dead-letters"
    dependencies = _ADMIN

    @get("/")
    async def dead_letters(
        self,
        *,
        request: Request[Any, Any, State],
        admin: NamedDependency[DashboardSession],
        redis: NamedDependency[Redis],
        page: PageNumber = 1,
    ) -> Template:
        params = request.query_params
        wanted = parse_letter_filter(params)
        listed = letter_list_response(
            await letter_page(redis, wanted, page=page, per_page=LETTERS_PER_PAGE)
        )
        query = urlencode(filter_query(wanted))
        outcome = {
            name: params[name]
            for name in ("retried", "discarded", "skipped")
            if params.get(name, "").isdigit()
        }
        return Template(
            "dead_letters.html",
            context={
                "session": admin,
                "page": "dead_letters",
                "letters": listed.dead_letters,
                "total": listed.total,
                "filter": filter_query(wanted),
                "kinds": list(LetterKind),
                "outcome": outcome,
                "page_number": page,
                "pages": max(1, -(-listed.total // LETTERS_PER_PAGE)),
                "query": f"{query}&" if query else "",
            },
        )

    @post("/retry", status_code=303)
    async def retry_matching(
        self,
        *,
        request: Request[Any, Any, State],
        admin: NamedDependency[DashboardSession],
        redis: NamedDependency[Redis],
        broker: NamedDependency[RedisBroker],
        pool: NamedDependency[Pool],
        relay: NamedDependency[OutboxRelay],
    ) -> Redirect:
        wanted = parse_letter_filter(await checked_form(request, admin))
        outcome = await retry_many(
            LetterSelection(filter=wanted, limit=MAX_LIMIT),
            redis=redis,
            broker=broker,
            pool=pool,
            on_outbox_written=relay.wake,
        )
        log.info("%s re-drove %d dead letters", admin.user.name, len(outcome.redriven))
        return _back_to_letters(wanted, retried=len(outcome.redriven), skipped=len(outcome.skipped))

    @post("/discard", status_code=303)
    async def discard_matching(
        self,
        *,
        request: Request[Any, Any, State],
        admin: NamedDependency[DashboardSession],
        redis: NamedDependency[Redis],
    ) -> Redirect:
        wanted = parse_letter_filter(await checked_form(request, admin))
        outcome = await discard_many(
            LetterSelection(filter=wanted, limit=MAX_LIMIT), redis=redis, user=admin.user
        )
        return _back_to_letters(
            wanted, discarded=len(outcome.discarded), skipped=len(outcome.skipped)
        )

    @post("/{letter_id:str}/retry", status_code=303)
    async def retry_one(
        self,
        *,
        request: Request[Any, Any, State],
        letter_id: FromPath[str],
        admin: NamedDependency[DashboardSession],
        redis: NamedDependency[Redis],
        broker: NamedDependency[RedisBroker],
        pool: NamedDependency[Pool],
        relay: NamedDependency[OutboxRelay],
    ) -> Redirect:
        form = await checked_form(request, admin)
        await letters.redrive(
            letter_id, redis=redis, broker=broker, pool=pool, on_outbox_written=relay.wake
        )
        return _back_to_letters(parse_letter_filter(form), retried=1)

    @post("/{letter_id:str}/discard", status_code=303)
    async def discard_one(
        self,
        *,
        request: Request[Any, Any, State],
        letter_id: FromPath[str],
        admin: NamedDependency[DashboardSession],
        redis: NamedDependency[Redis],
    ) -> Redirect:
        form = await checked_form(request, admin)
        outcome = await discard_many(LetterSelection(ids=[letter_id]), redis=redis, user=admin.user)
        if not outcome.discarded:
            raise DeadLetterNotFound(letter_id)
        return _back_to_letters(parse_letter_filter(form), discarded=1)
