"""/api/v1/dead-letters: admins list dead letters (filtered), re-drive their work one by one
or in bulk, and discard them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from asyncpg import Pool
from faststream.redis import RedisBroker
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from redis.asyncio import Redis

from services.gateway.auth import User, admin_guard
from services.gateway.dead_letters import letters
from services.gateway.dead_letters.bulk import LetterSelection, discard_many, retry_many
from services.gateway.dead_letters.filters import LetterFilter, LetterKind, letter_page
from services.gateway.dead_letters.schemas import (
    BulkDiscardResponse,
    BulkRetryResponse,
    DeadLetterListResponse,
    RetryResponse,
    bulk_discard_response,
    bulk_retry_response,
    letter_list_response,
    retry_response,
)
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import PageNumber, PerPage, errors

_ADMINS_ONLY = {403: "the caller is not an admin"}
_Moment = Annotated[
    datetime | None,
    QueryParameter(description="ISO 8601; without a zone, UTC; bounds the last failure"),
]


class AdminController(Controller):
    """Operator routes; 403 for anyone who is not an admin."""

    path = "/"
    tags = ["admin"]  # noqa: RUF012 - Litestar reads this class attribute as is

    # The guard sits on each handler: a controller's guards also run for the OPTIONS answer
    # Litestar adds, which authentication lets through without a user (the guard then 500s).
    @get("/dead-letters", guards=[admin_guard], responses=errors(400, 403, meaning=_ADMINS_ONLY))
    async def list_dead_letters(
        self,
        *,
        redis: NamedDependency[Redis],
        page: PageNumber = 1,
        per_page: PerPage = 20,
        kind: Annotated[
            LetterKind | None, QueryParameter(description="what the letter's stream carried")
        ] = None,
        stream: Annotated[
            str | None,
            QueryParameter(min_length=1, max_length=200, description="its original stream"),
        ] = None,
        error: Annotated[
            str | None,
            QueryParameter(
                min_length=1, max_length=200, description="text in its error (any case)"
            ),
        ] = None,
        job_id: Annotated[
            str | None,
            QueryParameter(min_length=1, max_length=200, description="the job its file is of"),
        ] = None,
        task: Annotated[
            str | None,
            QueryParameter(min_length=1, max_length=200, description="a task's registered name"),
        ] = None,
        failed_after: _Moment = None,
        failed_before: _Moment = None,
    ) -> DeadLetterListResponse:
        """Entries of the dead-letter stream matching every filter given, newest first;
        `total` counts the matching ones."""
        letter_filter = LetterFilter(
            kind=kind,
            stream=stream,
            error=error,
            job_id=job_id,
            task=task,
            failed_after=failed_after,
            failed_before=failed_before,
        )
        return letter_list_response(
            await letter_page(redis, letter_filter, page=page, per_page=per_page)
        )

    @post(
        "/dead-letters/retry",
        status_code=200,
        guards=[admin_guard],
        responses=errors(400, 403, meaning=_ADMINS_ONLY),
    )
    async def retry_dead_letters(
        self,
        *,
        data: JSONBody[LetterSelection],
        redis: NamedDependency[Redis],
        broker: NamedDependency[RedisBroker],
        pool: NamedDependency[Pool],
        relay: NamedDependency[OutboxRelay],
    ) -> BulkRetryResponse:
        """Re-drive the letters named by `ids`, or every letter matching `filter` (the
        listing's filters; `{}` for all), oldest first, each as the single retry does; a
        letter gone or whose work may not run again is skipped and said why."""
        outcome = await retry_many(
            data, redis=redis, broker=broker, pool=pool, on_outbox_written=relay.wake
        )
        return bulk_retry_response(outcome)

    @post(
        "/dead-letters/discard",
        status_code=200,
        guards=[admin_guard],
        responses=errors(400, 403, meaning=_ADMINS_ONLY),
    )
    async def discard_dead_letters(
        self,
        *,
        data: JSONBody[LetterSelection],
        redis: NamedDependency[Redis],
        current_user: NamedDependency[User],
    ) -> BulkDiscardResponse:
        """Remove the selected letters from the dead-letter stream (each logged with what it
        held); their jobs and tasks stay failed or dead."""
        return bulk_discard_response(await discard_many(data, redis=redis, user=current_user))

    @post(
        "/dead-letters/{letter_id:str}/retry",
        status_code=202,
        guards=[admin_guard],
        responses=errors(
            403,
            404,
            409,
            meaning={
                **_ADMINS_ONLY,
                409: "the letter's work may not run again (a cancelled job; a file or task"
                " queued again already, completed, cancelled, or whose end is not recorded yet)",
            },
        ),
    )
    async def retry_dead_letter(
        self,
        *,
        letter_id: FromPath[str],
        redis: NamedDependency[Redis],
        broker: NamedDependency[RedisBroker],
        pool: NamedDependency[Pool],
        relay: NamedDependency[OutboxRelay],
    ) -> RetryResponse:
        """Queue a dead letter's work again: a download reopens its file and job (409 when the
        job was cancelled, or the file is not failed: queued again already, say); a task is
        pending again at once with its whole max_tries again, its attempts and error kept
        until its next outcome (409 when it was cancelled or completed); anything else goes
        back onto its stream as it was."""
        redriven = await letters.redrive(
            letter_id, redis=redis, broker=broker, pool=pool, on_outbox_written=relay.wake
        )
        return retry_response(redriven)
