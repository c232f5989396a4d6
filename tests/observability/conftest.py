"""Fixtures for observability tests: a migrated database's pool, the gateway app, tokens, spans."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.gateway.app import create_app
from services.gateway.auth import create_token
from shared.postgres import open_pool
from shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    import asyncpg
    from litestar import Litestar

    TokenFactory = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(spans: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield provider
    provider.shutdown()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url) as opened:
        yield opened


@pytest.fixture
def settings(redis_url: str, database_url: str, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "DOWNLINK_REDIS_URL": redis_url,
            "DOWNLINK_DATABASE_URL": database_url,
            "DOWNLINK_STORAGE_URL": f"file://{tmp_path / 'storage'}",
            "DOWNLINK_SHUTDOWN_GRACE": "2",
        }
    )


@pytest.fixture
async def client(
    settings: Settings, tracer_provider: TracerProvider
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """A client of the running gateway (its lifespan, tracker and worker heartbeat included)."""
    app = create_app(settings, tracer_provider=tracer_provider)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
def make_auth(pool: asyncpg.Pool) -> TokenFactory:
    """`await make_auth("bob", admin=True)` -> the Authorization header of a new token."""

    async def make(name: str = "alice", *, admin: bool = False) -> dict[str, str]:
        token = await create_token(pool, name, admin=admin)
        return {"Authorization": f"Bearer {token}"}

    return make
