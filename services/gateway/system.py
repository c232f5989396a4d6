"""Liveness and readiness: /health and /ready, without authentication."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from redis.asyncio import Redis

from services.gateway.jobs.queries import JobRepository

if TYPE_CHECKING:
    from collections.abc import Awaitable

PROBE_TIMEOUT_S = 2.0


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """`checks` maps each dependency to "ok" or what went wrong."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


class SystemController(Controller):
    """Probes for supervisors and load balancers."""

    path = "/"
    tags = ["system"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @get("/health")
    async def health(self) -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @get(
        "/ready",
        responses={
            503: ResponseSpec(
                data_container=Readiness,
                description="Redis or PostgreSQL does not answer; `checks` says which",
                generate_examples=False,
            )
        },
    )
    async def ready(
        self, repository: NamedDependency[JobRepository], redis: NamedDependency[Redis]
    ) -> Response[Readiness]:
        """Readiness: 200 when Redis and PostgreSQL both answer, else 503 naming what failed."""
        redis_state, postgres_state = await asyncio.gather(
            _probe(redis.ping()), _probe(repository.ping())
        )
        checks = {"redis": redis_state, "postgres": postgres_state}
        ready = all(state == "ok" for state in checks.values())
        return Response(
            Readiness(status="ready" if ready else "unavailable", checks=checks),
            status_code=200 if ready else 503,
        )


async def _probe(check: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(check, PROBE_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_S:.0f}s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"
