"""/api/v1/dead-letters: admins list dead letters and re-drive their work."""

from __future__ import annotations

from asyncpg import Pool
from faststream.redis import RedisBroker
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from redis.asyncio import Redis

from services.gateway.auth import admin_guard
from services.gateway.dead_letters import letters
from services.gateway.dead_letters.schemas import (
    DeadLetterListResponse,
    RetryResponse,
    letter_list_response,
    retry_response,
)
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import PageNumber, PerPage, errors

_ADMINS_ONLY = {403: "the caller is not an admin"}


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
    ) -> DeadLetterListResponse:
        """Entries of the dead-letter stream, newest first."""
        return letter_list_response(await letters.list_letters(redis, page=page, per_page=per_page))

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
                409: "the letter's work may not run again (a cancelled job; a task cancelled,"
                " completed, or whose end is not recorded yet)",
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
        job was cancelled); a task is pending again at once with its whole max_tries
        again, its attempts and error kept until its next outcome (409 when it was cancelled
        or completed); anything else goes back onto its stream as it was."""
        redriven = await letters.redrive(
            letter_id, redis=redis, broker=broker, pool=pool, on_outbox_written=relay.wake
        )
        return retry_response(redriven)
