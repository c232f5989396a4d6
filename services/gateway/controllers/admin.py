"""/api/v1/dead-letters: admins list dead letters and re-drive their work."""

from __future__ import annotations

from typing import Annotated

from asyncpg import Pool
from faststream.redis import RedisBroker
from litestar import Controller, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter
from redis.asyncio import Redis

from services.gateway import dead_letters
from services.gateway.auth import admin_guard
from services.gateway.controllers.responses import errors
from services.gateway.relay import OutboxRelay
from services.gateway.resources import provide_broker, provide_pool, provide_redis, provide_relay
from services.gateway.schemas import MAX_PAGE, DeadLetterListResponse, RetryResponse

_ADMINS_ONLY = {403: "the caller is not an admin"}


class AdminController(Controller):
    """Operator routes; 403 for anyone who is not an admin."""

    path = "/"
    tags = ["admin"]  # noqa: RUF012 - Litestar reads this class attribute as is
    dependencies = {  # noqa: RUF012
        "redis": Provide(provide_redis, sync_to_thread=False),
        "broker": Provide(provide_broker, sync_to_thread=False),
        "pool": Provide(provide_pool, sync_to_thread=False),
        "relay": Provide(provide_relay, sync_to_thread=False),
    }
    signature_namespace = {  # noqa: RUF012 - names Litestar resolves in the signatures
        "Redis": Redis,
        "RedisBroker": RedisBroker,
        "Pool": Pool,
        "OutboxRelay": OutboxRelay,
    }

    # The guard sits on each handler: a controller's guards also run for the OPTIONS answer
    # Litestar adds, which authentication lets through without a user (the guard then 500s).
    @get("/dead-letters", guards=[admin_guard], responses=errors(400, 403, meaning=_ADMINS_ONLY))
    async def list_dead_letters(
        self,
        *,
        redis: NamedDependency[Redis],
        page: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 1,
        per_page: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    ) -> DeadLetterListResponse:
        """Entries of the dead-letter stream, newest first."""
        return await dead_letters.list_letters(redis, page=page, per_page=per_page)

    @post(
        "/dead-letters/{letter_id:str}/retry",
        status_code=202,
        guards=[admin_guard],
        responses=errors(
            403,
            404,
            409,
            meaning={**_ADMINS_ONLY, 409: "the letter's work may not run again (cancelled job)"},
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
        job was cancelled); anything else goes back onto its stream as it was."""
        return await dead_letters.redrive(
            letter_id,
            redis=redis,
            broker=broker,
            pool=pool,
            on_outbox_written=relay.wake,
        )
