"""The outbox: its SQL, its relay onto Redis, and the commands the reconciler keeps alive.

Rows are written in the transaction whose change they announce (`add_to_outbox`); the relay
publishes committed rows onto their Redis streams. A row is marked sent only after Redis
accepted it, in the transaction that locked it, so a crash or an outage between the two
re-publishes the row later: duplicates are harmless, loss is not. Each command the reconciler
keeps alive (a row with a command key: a download, a file's processing, a composite, an
export) is published together with its live marker (one MULTI/EXEC), which the reconciler
reads to tell a command Redis still holds from one it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import msgspec
from opentelemetry import context, propagate
from redis.exceptions import RedisError

from shared.broker import Frames
from shared.ids import FileId
from shared.postgres import DATABASE_DOWN, rows_affected
from shared.streams import DATA_FIELD, live_key

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

# Outages the relay waits out; anything else is a bug, logged with its traceback.
_OUTAGES: tuple[type[BaseException], ...] = (*DATABASE_DOWN, RedisError, OSError)


class OutboxRow(msgspec.Struct, frozen=True, kw_only=True):
    """One message to publish; `command_key` is set on the commands the reconciler keeps alive
    (the relay marks each live under it)."""

    id: int
    stream: str
    body: bytes
    headers: dict[str, str]
    command_key: str | None = None


# --- the outbox's SQL -----------------------------------------------------------------------


async def add_to_outbox(
    connection: asyncpg.Connection,
    stream: str,
    body: bytes,
    *,
    headers: dict[str, str],
    command_key: str | None = None,
    file_id: FileId | None = None,
) -> None:
    """Queue one message.

    Args:
        command_key: the work a reconciled command is for (`CommandKind.key`); None for events.
        file_id: the file a download command is for.
    """
    await connection.execute(
        "INSERT INTO outbox (stream, body, headers, command_key, file_id)"
        " VALUES ($1, $2, $3, $4, $5)",
        stream,
        body,
        headers,
        command_key,
        file_id,
    )


async def add_many_to_outbox(
    connection: asyncpg.Connection,
    messages: Sequence[tuple[str, bytes, str | None]],
    *,
    headers: dict[str, str],
) -> None:
    """Queue (stream, body, command_key) messages in one statement, in the order given."""
    if not messages:
        return
    await connection.execute(
        "INSERT INTO outbox (stream, body, headers, command_key)"
        " SELECT u.stream, u.body, $4::jsonb, u.key"
        " FROM unnest($1::text[], $2::bytea[], $3::text[]) WITH ORDINALITY"
        "   AS u(stream, body, key, n)"
        " ORDER BY u.n",
        [stream for stream, _, _ in messages],
        [body for _, body, _ in messages],
        [key for _, _, key in messages],
        headers,
    )


async def claim_outbox(connection: asyncpg.Connection, limit: int) -> list[OutboxRow]:
    """Lock the oldest unsent rows; other relays skip them until this transaction ends."""
    rows = await connection.fetch(
        "SELECT id, stream, body, headers, command_key FROM outbox WHERE sent_at IS NULL"
        " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [
        OutboxRow(
            id=r["id"],
            stream=r["stream"],
            body=r["body"],
            headers=r["headers"] or {},
            command_key=r["command_key"],
        )
        for r in rows
    ]


async def mark_sent(connection: asyncpg.Connection, ids: Sequence[int]) -> None:
    await connection.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", ids)


async def purge_sent(pool: asyncpg.Pool, *, outbox_age_s: float, events_age_s: float) -> None:
    """Forget sent outbox rows and old processed-event ids; both only grow otherwise."""
    async with pool.acquire() as connection:
        await connection.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)", outbox_age_s
        )
        await connection.execute(
            "DELETE FROM processed_events WHERE processed_at < now() - make_interval(secs => $1)",
            events_age_s,
        )


# --- commands the reconciler keeps alive ----------------------------------------------------
# Each kind of command whose work PostgreSQL tracks is one CommandKind: its queries, defined by
# its area and registered with the reconciler (services.gateway.reconciler.COMMAND_KINDS).


class QueuedCommand(msgspec.Struct, frozen=True, kw_only=True):
    """A command of unfinished work, rebuilt from PostgreSQL to be published again.

    Attributes:
        subject_id: the row the work fills (a file, a composite, an export); batches page by it.
        key: the command key: its outbox rows and its live marker are found by it.
        stream: where it goes.
        body: the command as its consumer decodes it.
        file_id: the file of a download command (its outbox rows carry it too).
    """

    subject_id: str
    key: str
    stream: str
    body: bytes
    file_id: FileId | None = None


# (connection, after subject id or None, limit) -> a batch ordered by subject id.
SentQuery = Callable[[asyncpg.Connection, str | None, int], Awaitable[list[QueuedCommand]]]
# (connection, stale_s, limit) -> started work silent for stale_s, not re-queued within it.
StaleQuery = Callable[[asyncpg.Connection, float, int], Awaitable[list[QueuedCommand]]]
# (connection, subject ids) -> those still open, their rows locked until the transaction ends.
OpenQuery = Callable[[asyncpg.Connection, Sequence[str]], Awaitable[set[str]]]


@dataclass(frozen=True, slots=True)
class CommandKind:
    """One kind of command whose work PostgreSQL tracks, and that the reconciler keeps alive.

    Attributes:
        name: what reports and logs call it.
        key_prefix: a command key is this prefix and the subject id.
        sent: open work whose command left the outbox (no row of its key waits unsent); the
            reconciler publishes again those whose live marker Redis lost.
        still_open: the re-check inside the transaction that queues them again.
        stale: started work with no sign of life for `stale_s`, or None where long silence is
            normal (processing reports nothing until a step ends).
    """

    name: str
    key_prefix: str
    sent: SentQuery
    still_open: OpenQuery
    stale: StaleQuery | None = None

    def key(self, subject_id: str) -> str:
        return f"{self.key_prefix}{subject_id}"


def no_row_waiting(key_sql: str) -> str:
    """SQL: no outbox row for the command key `key_sql` waits unsent (so its command left)."""
    return (
        f"NOT EXISTS (SELECT 1 FROM outbox o WHERE o.command_key = {key_sql} AND o.sent_at IS NULL)"
    )


def not_queued_within(key_sql: str, seconds_sql: str) -> str:
    """SQL: no outbox row for the key waits, nor was one written in the last `seconds_sql`."""
    # A row written within the window is our own earlier re-publish still on its way (a deep
    # lane can hold it for long): publishing on every pass would pile up duplicates.
    return (
        f"NOT EXISTS (SELECT 1 FROM outbox o WHERE o.command_key = {key_sql}"
        f" AND (o.sent_at IS NULL OR o.created_at > now() - make_interval(secs => {seconds_sql})))"
    )


async def requeue(
    connection: asyncpg.Connection,
    kind: CommandKind,
    commands: Sequence[QueuedCommand],
    *,
    headers: dict[str, str],
) -> int:
    """Queue each command again whose work is still open and has no row waiting; how many.

    The kind's conditions are checked again here under row locks, so work that moved on since
    it was read is skipped and cannot complete before this commits. Rows another transaction
    holds are skipped rather than waited for (no deadlock with the tracker's lock order): that
    work is moving right now, and the next pass looks again.
    """
    if not commands:
        return 0
    still_open = await kind.still_open(connection, [c.subject_id for c in commands])
    chosen = [c for c in commands if c.subject_id in still_open]
    if not chosen:
        return 0
    result = await connection.execute(
        "INSERT INTO outbox (stream, body, headers, command_key, file_id)"
        " SELECT u.stream, u.body, $5::jsonb, u.key, u.file_id"
        " FROM unnest($1::text[], $2::bytea[], $3::text[], $4::uuid[]) WITH ORDINALITY"
        "   AS u(stream, body, key, file_id, n)"
        f" WHERE {no_row_waiting('u.key')}"
        " ORDER BY u.n",
        [c.stream for c in chosen],
        [c.body for c in chosen],
        [c.key for c in chosen],
        [c.file_id for c in chosen],
        headers,
    )
    return rows_affected(result)


# --- the relay ------------------------------------------------------------------------------


class OutboxRelay:
    """Moves unsent outbox rows to Redis: at once when woken, else every `poll_interval_s`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        *,
        tracer_provider: TracerProvider | None = None,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
        purge_interval_s: float = 600.0,
        keep_sent_s: float = 86_400.0,
        keep_processed_events_s: float = 7 * 86_400.0,
        live_ttl_s: int = 7 * 86_400,
        purges: Sequence[Callable[[asyncpg.Pool], Awaitable[bool]]] = (),
    ) -> None:
        """`purges` remove other areas' rows past their retention (ended tasks) one bounded
        batch per call, True when more remain: they run with the relay's own purge, and again
        at the next poll while any has more, so relaying goes on between batches."""
        self._pool = pool
        self._frames = Frames(tracer_provider)
        self._redis = redis
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._max_backoff_s = max_backoff_s
        self._purge_interval_s = purge_interval_s
        self._keep_sent_s = keep_sent_s
        self._keep_processed_events_s = keep_processed_events_s
        self._live_ttl_s = live_ttl_s
        self._purges = tuple(purges)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        """Publish now rather than at the next poll (called after a commit that wrote rows)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Relay until `stop()`; outages of Redis or PostgreSQL are logged and waited out."""
        backoff_s = self._poll_interval_s
        next_purge = time.monotonic() + 60.0  # not at start: let the service settle first
        more_to_purge = False
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                sent = await self.relay_once()
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self._purge_interval_s
                    await purge_sent(
                        self._pool,
                        outbox_age_s=self._keep_sent_s,
                        events_age_s=self._keep_processed_events_s,
                    )
                    more_to_purge = True
                if more_to_purge:
                    more_to_purge = any([await purge(self._pool) for purge in self._purges])
            except _OUTAGES as exc:
                log.warning(
                    "outbox relay: %s: %s; retrying in %.0fs", type(exc).__name__, exc, backoff_s
                )
                await self._pause(backoff_s, wakeable=False)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
                continue
            except Exception:
                # A bug must not end the relay for good: nothing would be published any more.
                log.exception("outbox relay failed; retrying in %.0fs", backoff_s)
                await self._pause(backoff_s, wakeable=False)
                backoff_s = min(backoff_s * 2, self._max_backoff_s)
                continue
            backoff_s = self._poll_interval_s
            if sent < self._batch_size:
                await self._pause(self._poll_interval_s)

    async def relay_once(self) -> int:
        """Publish one batch of unsent rows and mark them sent; returns how many."""
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await claim_outbox(connection, self._batch_size)
            if not rows:
                return 0
            await self._publish(rows)
            await mark_sent(connection, [row.id for row in rows])
        self.published += len(rows)
        log.debug("relayed %d outbox rows", len(rows))
        return len(rows)

    async def _publish(self, rows: list[OutboxRow]) -> None:
        # One MULTI/EXEC per batch: one round trip instead of one per row, and each XADD lands
        # together with its live marker or not at all. A flush, or AOF losing its last second,
        # then takes both or neither, so a missing marker always means a missing command.
        async with self._redis.pipeline(transaction=True) as pipe:
            for run in _runs(rows):
                # Framed under the context of the request that wrote the rows: the publish span
                # is that request's child, and the frames carry the publish span onward. One
                # span per run of rows a request wrote for one stream (a batch's tasks).
                first = run[0]
                token = context.attach(propagate.extract(first.headers))
                try:
                    frames = await self._frames.frames(
                        first.stream, [(r.body, str(r.id)) for r in run], headers=first.headers
                    )
                finally:
                    context.detach(token)
                for row, frame in zip(run, frames, strict=True):
                    pipe.xadd(row.stream, {DATA_FIELD: frame})
                    if row.command_key is not None:
                        pipe.set(live_key(row.command_key), b"1", ex=self._live_ttl_s)
            await pipe.execute()

    async def _pause(self, seconds: float, *, wakeable: bool = True) -> None:
        # While backing off from an outage, new rows must not shorten the wait: a burst of
        # submissions would otherwise hammer the server that is down.
        event = self._wake if wakeable else self._stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)


def _runs(rows: Sequence[OutboxRow]) -> list[list[OutboxRow]]:
    """`rows` cut into runs of consecutive rows with the same stream and headers, in order."""
    runs: list[list[OutboxRow]] = []
    for row in rows:
        if runs and (runs[-1][0].stream, runs[-1][0].headers) == (row.stream, row.headers):
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs
