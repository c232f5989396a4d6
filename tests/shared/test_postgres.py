"""`downlink migrate`: applies each migration once, also when two processes start together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import msgspec

import services.gateway.migrations
from services.gateway.migrations import migrate
from shared.postgres import open_pool
from tests.support import postgres_server

INITIAL = "0001_initial"
# Every numbered file in services/gateway/migrations, in the order they must run.
MIGRATIONS = Path(services.gateway.migrations.__file__).parent
VERSIONS = sorted(p.stem for p in MIGRATIONS.glob("*.sql"))


async def applied_versions(database_url: str) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT version FROM schema_migrations ORDER BY version")
        return [row["version"] for row in rows]
    finally:
        await connection.close()


async def tables(database_url: str) -> set[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await connection.close()


async def test_migrate_applies_the_initial_schema_once(empty_database_url: str) -> None:
    assert VERSIONS[0] == INITIAL
    assert await migrate(empty_database_url) == VERSIONS
    assert {"users", "api_tokens", "jobs", "schema_migrations"} <= await tables(empty_database_url)
    assert await migrate(empty_database_url) == []
    assert await applied_versions(empty_database_url) == VERSIONS


async def test_concurrent_migrations_apply_each_version_exactly_once(
    empty_database_url: str,
) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(3)))
    assert sorted(results) == [[], [], VERSIONS]
    assert await applied_versions(empty_database_url) == VERSIONS


async def test_migrate_creates_a_missing_database(database_server_url: str) -> None:
    name = postgres_server.unique_name("dl_missing_")
    url = postgres_server.database_url(database_server_url, name)
    try:
        assert await migrate(url) == VERSIONS
        assert await applied_versions(url) == VERSIONS
    finally:
        await asyncio.to_thread(postgres_server.drop_database, database_server_url, name)


async def test_the_pool_speaks_jsonb_as_python_objects(database_url: str) -> None:
    async with open_pool(database_url, max_size=2) as pool:
        value = await pool.fetchval("SELECT $1::jsonb", {"bands": ["B04", "B08"], "n": 2})
        assert value == {"bands": ["B04", "B08"], "n": 2}
        text = await pool.fetchval("SELECT $1::jsonb::text", {"a": 1})
        assert msgspec.json.decode(text) == {"a": 1}
