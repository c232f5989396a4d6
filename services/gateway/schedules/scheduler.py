"""The scheduler: every tick, the gateway that leads fires the schedules that are due.

One gateway at a time leads: the holder of a PostgreSQL session advisory lock, taken on a
connection of the scheduler's own and held for as long as it leads. The lock goes with the
session, so when the leading gateway dies (or its connection does), another one's next tick
takes it, within a second or so. Firing itself locks each schedule's row and keys each run's
task, so even two firers at once (a leader that has not noticed yet it lost its session) make
one task per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import TYPE_CHECKING

import asyncpg
from opentelemetry import trace

from services.gateway.schedules.firing import OUTAGES, fire_due

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.trace import TracerProvider

log = logging.getLogger(__name__)

# Any constant works; every gateway must use the same one.
SCHEDULER_LOCK = int.from_bytes(hashlib.sha256(b"downlink-scheduler").digest()[:7], "big")
TICK_S = 0.5
CONNECT_TIMEOUT_S = 5.0


class Scheduler:
    """Ticks every `tick_s` until `stop()`: takes or keeps the lead, then fires what is due."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        *,
        on_outbox_written: Callable[[], None] | None = None,
        tracer_provider: TracerProvider | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self._pool = pool
        self._database_url = database_url
        self._on_outbox_written = on_outbox_written
        self._tracer = trace.get_tracer("downlink.scheduler", tracer_provider=tracer_provider)
        self._tick_s = tick_s
        self._stopping = asyncio.Event()
        self._lock_connection: asyncpg.Connection | None = None
        self._leading = False

    @property
    def leading(self) -> bool:
        """Whether this scheduler held the lead at its latest tick."""
        return self._leading

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Tick until `stop()` (or cancelled); the lead is given up on the way out."""
        try:
            while True:
                try:
                    await self.tick()
                except OUTAGES as exc:
                    log.warning(
                        "scheduler: %s: %s; trying again next tick", type(exc).__name__, exc
                    )
                except Exception:
                    # A bug must not end the loop for good: no schedule would fire again.
                    log.exception("scheduler tick failed")
                if await self._sleep(self._tick_s):
                    return
        finally:
            await self._resign()

    async def tick(self) -> int:
        """One tick: the runs it enqueued (0 when another gateway leads)."""
        if not await self._lead():
            return 0
        fired = await fire_due(self._pool, self._tracer)
        if fired and self._on_outbox_written is not None:
            self._on_outbox_written()
        return fired

    async def _lead(self) -> bool:
        """Keep the lead, or try to take it."""
        connection = self._lock_connection
        if connection is not None and self._leading:
            try:
                # A live session still holds its lock; a dead one gave it up.
                await connection.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
            except OUTAGES as exc:
                log.warning("scheduler: lost the lead with its connection (%s)", exc)
                await self._resign()
                return False
            return True
        if connection is None or connection.is_closed():
            connection = await asyncpg.connect(self._database_url, timeout=CONNECT_TIMEOUT_S)
            self._lock_connection = connection
        self._leading = bool(
            await connection.fetchval("SELECT pg_try_advisory_lock($1)", SCHEDULER_LOCK)
        )
        if self._leading:
            log.info("scheduler: leading; this gateway fires the schedules")
        return self._leading

    async def _resign(self) -> None:
        """Close the lock's session, which gives the lead up."""
        connection, self._lock_connection, self._leading = self._lock_connection, None, False
        if connection is None or connection.is_closed():
            return
        try:
            await connection.close(timeout=CONNECT_TIMEOUT_S)
        except OUTAGES as exc:
            log.warning("scheduler: closing the lock's connection failed (%s)", exc)
        finally:
            # Cancelled or failed half way: the session must still end, or it keeps the lock.
            if not connection.is_closed():
                connection.terminate()

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()
