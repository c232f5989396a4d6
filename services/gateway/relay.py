"""The outbox relay: publishes rows the gateway committed to PostgreSQL onto their Redis streams.

A row is marked sent only after Redis accepted it, in the transaction that locked it, so a crash
or an outage between the two re-publishes the row later: duplicates are harmless, loss is not.
Each command the reconciler keeps alive (a row with a command key: a download, a file's
processing, a composite, an export) is published together with its live marker (one
MULTI/EXEC), which the reconciler reads to tell a command Redis still holds from one it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from opentelemetry import context, propagate
from redis.exceptions import RedisError

from services.gateway import repository
from services.gateway.repository import DATABASE_DOWN
from shared.streams import live_key

if TYPE_CHECKING:
    import asyncpg
    from faststream.redis import RedisBroker
    from redis.asyncio import Redis

    from services.gateway.repository import OutboxRow

log = logging.getLogger(__name__)

_CONTENT_TYPE = {"content-type": "application/json"}
# Outages the relay waits out; anything else is a bug, logged with its traceback.
_OUTAGES: tuple[type[BaseException], ...] = (*DATABASE_DOWN, RedisError, OSError)


def trace_headers() -> dict[str, str]:
    """The current trace context as message headers (`traceparent`), empty outside a span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class OutboxRelay:
    """Moves unsent outbox rows to Redis: at once when woken, else every `poll_interval_s`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: RedisBroker,
        redis: Redis,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
        purge_interval_s: float = 600.0,
        keep_sent_s: float = 86_400.0,
        keep_processed_events_s: float = 7 * 86_400.0,
        live_ttl_s: int = 7 * 86_400,
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._redis = redis
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._max_backoff_s = max_backoff_s
        self._purge_interval_s = purge_interval_s
        self._keep_sent_s = keep_sent_s
        self._keep_processed_events_s = keep_processed_events_s
        self._live_ttl_s = live_ttl_s
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
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                sent = await self.relay_once()
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + self._purge_interval_s
                    await repository.purge_sent(
                        self._pool,
                        outbox_age_s=self._keep_sent_s,
                        events_age_s=self._keep_processed_events_s,
                    )
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
            rows = await repository.claim_outbox(connection, self._batch_size)
            if not rows:
                return 0
            await self._publish(rows)
            await repository.mark_sent(connection, [row.id for row in rows])
        self.published += len(rows)
        log.debug("relayed %d outbox rows", len(rows))
        return len(rows)

    async def _publish(self, rows: list[OutboxRow]) -> None:
        # One MULTI/EXEC per batch: one round trip instead of one per row, and each XADD lands
        # together with its live marker or not at all. A flush, or AOF losing its last second,
        # then takes both or neither, so a missing marker always means a missing command.
        async with self._redis.pipeline(transaction=True) as pipe:
            for row in rows:
                # Publishing under the context of the request that wrote the row makes the
                # publish span its child, and puts that span's traceparent in the frame.
                token = context.attach(propagate.extract(row.headers))
                try:
                    await self._broker.publish(
                        row.body,  # bytes pass through FastStream unchanged
                        stream=row.stream,
                        headers={**row.headers, **_CONTENT_TYPE},
                        pipeline=pipe,
                    )
                finally:
                    context.detach(token)
                if row.command_key is not None:
                    pipe.set(live_key(row.command_key), b"1", ex=self._live_ttl_s)
            await pipe.execute()

    async def _pause(self, seconds: float, *, wakeable: bool = True) -> None:
        # While backing off from an outage, new rows must not shorten the wait: a burst of
        # submissions would otherwise hammer the server that is down.
        event = self._wake if wakeable else self._stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
