"""What the lifespan opens and the handlers use, kept on the app's state, and their providers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg
    from asyncpg import Pool
    from faststream.redis import RedisBroker
    from litestar.datastructures import State
    from redis.asyncio import Redis

    from services.gateway.relay import OutboxRelay
    from services.gateway.repository import JobRepository
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
    relay: OutboxRelay
    broker: RedisBroker


def install(state: State, resources: Resources) -> None:
    state[_STATE_KEY] = resources


def uninstall(state: State) -> None:
    state.pop(_STATE_KEY, None)


def resources_of(state: State) -> Resources:
    resources: Resources = state[_STATE_KEY]
    return resources


# Providers for `Provide(...)`; Litestar injects `state` by name.


def provide_repository(state: State) -> JobRepository:
    return resources_of(state).repository


def provide_relay(state: State) -> OutboxRelay:
    return resources_of(state).relay


def provide_redis(state: State) -> Redis:
    return resources_of(state).redis


def provide_storage(state: State) -> Storage:
    return resources_of(state).storage


def provide_settings(state: State) -> Settings:
    return resources_of(state).settings


def provide_broker(state: State) -> RedisBroker:
    return resources_of(state).broker


def provide_pool(state: State) -> Pool:
    return resources_of(state).pool
