"""PostgreSQL: the connection pool, and the errors that mean "not reachable right now"."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import msgspec

# Errors that mean "PostgreSQL is not reachable right now" rather than "this query is wrong":
# callers wait and retry on these (and the API answers 503), never give the work up.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, "cannot connect now"
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.TransactionRollbackError,  # deadlock or serialization: simply retry
    ConnectionError,
    TimeoutError,
)


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb",
        encoder=lambda value: msgspec.json.encode(value).decode(),
        decoder=msgspec.json.decode,
        schema="pg_catalog",
    )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Nothing more to undo when a connection goes back to the pool.

    asyncpg still rolls back an open transaction and drops listeners first; its default reset
    adds a round trip per release (`RESET ALL`, `UNLISTEN *`, unlocking advisory locks), 12 % of
    the gateway's CPU under status polling. Downlink keeps no session state on pooled
    connections: settings and advisory locks are per transaction (`SET LOCAL`,
    `pg_advisory_xact_lock`); anything session-wide takes a connection of its own.
    """


@contextlib.asynccontextmanager
async def open_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10
) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose connections speak jsonb as Python objects."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
    )
    try:
        yield pool
    finally:
        await pool.close()


def rows_affected(command_tag: str) -> int:
    """How many rows a statement touched, from the command tag asyncpg answers it with
    ("UPDATE 1", "INSERT 0 3")."""
    return int(command_tag.rsplit(" ", 1)[-1])
