"""The gateway's schema: numbered .sql files beside this module, applied by `downlink migrate`."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.errors import ConfigError

# Any constant works; it only has to be the same for every process that migrates.
_MIGRATION_LOCK = int.from_bytes(hashlib.sha256(b"downlink-migrations").digest()[:7], "big")


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files(__name__)
    return sorted(
        (entry.name.removesuffix(".sql"), entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )


async def migrate(database_url: str) -> list[str]:
    """Apply the migrations not applied yet, in order; returns the versions applied now.

    Runs under an advisory lock, so concurrent starts apply each migration exactly once.
    """
    await _create_database_if_missing(database_url)
    connection = await asyncpg.connect(database_url)
    applied_now: list[str] = []
    try:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"]
                for r in await connection.fetch("SELECT version FROM schema_migrations")
            }
            for version, sql in _migration_files():
                if version in done:
                    continue
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)", version
                )
                applied_now.append(version)
    finally:
        await connection.close()
    return applied_now


async def _create_database_if_missing(database_url: str) -> None:
    try:
        connection = await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await connection.close()
        return
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,63}", name):
        raise ConfigError(f"DOWNLINK_DATABASE_URL: cannot create database {name!r}")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await admin.close()
