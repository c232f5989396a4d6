"""What the lifespan opens and the handlers use, kept on the app's state, and their providers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar.di import Provide

if TYPE_CHECKING:
    import asyncpg
    from faststream.redis import RedisBroker
    from litestar.datastructures import State
    from redis.asyncio import Redis

    from services.gateway.exports.queries import ExportRepository
    from services.gateway.jobs.queries import JobRepository
    from services.gateway.outbox import OutboxRelay
    from shared.settings import Settings
    from shared.storage import Storage

_STATE_KEY = "downlink"


@dataclass(frozen=True, slots=True)
class Resources:
    """The open clients of one gateway process."""

    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    storage: Storage
    repository: JobRepository
    exports: ExportRepository
    relay: OutboxRelay
    broker: RedisBroker


def install(state: State, resources: Resources) -> None:
    state[_STATE_KEY] = resources


def uninstall(state: State) -> None:
    state.pop(_STATE_KEY, None)


def resources_of(state: State) -> Resources:
    resources: Resources = state[_STATE_KEY]
    return resources


def _provider(name: str) -> Callable[[State], Any]:
    def provide(state: State) -> Any:
        return getattr(resources_of(state), name)

    provide.__name__ = f"provide_{name}"
    return provide


# Declared once, on the application (app.py): a handler names the ones it needs, each one of
# the open Resources by its field name. Litestar injects `state` into a provider by name.
PROVIDERS = {
    field.name: Provide(_provider(field.name), sync_to_thread=False)
    for field in dataclasses.fields(Resources)
}
