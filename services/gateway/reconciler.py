"""The reconciler: re-publishes work Redis lost, ends jobs past their timeout, trims the streams.

PostgreSQL is the record and Redis the transport; every pass compares the two. One gateway at a
time runs a pass (a PostgreSQL advisory lock), every `DOWNLINK_RECONCILE_INTERVAL` seconds.
Each kind of command it keeps alive is an `outbox.CommandKind` its area defines, listed in
COMMAND_KINDS: a new kind of work joins by registering its own there, and every pass loops
over them. A job past its timeout ends by the job lifecycle's own end rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
from redis.exceptions import RedisError

from services.gateway.exports.commands import EXPORTS
from services.gateway.jobs.cancellation import announce_cancel
from services.gateway.jobs.commands import DOWNLOADS
from services.gateway.jobs.lifecycle import TimedOutJob, time_out_job, timed_out_jobs
from services.gateway.outbox import CommandKind, QueuedCommand, requeue
from services.gateway.processing.commands import COMPOSITES, FILE_PROCESSING
from services.gateway.tasks.commands import TASKS
from shared.consumer import ensure_groups
from shared.postgres import DATABASE_DOWN
from shared.streams import DOWNLOAD_LANES, EVENTS_STREAM, GROUPS, live_key
from shared.telemetry import trace_headers
from shared.trim import cap_dead_letters, trim_stream

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from redis.asyncio import Redis

    from shared.settings import Settings

log = logging.getLogger(__name__)

# Any constant works; every gateway must use the same one.
RECONCILE_LOCK = int.from_bytes(hashlib.sha256(b"downlink-reconciler").digest()[:7], "big")
# A downloading file with no event for this long lost its message or its events: FileProgress
# arrives every second while bytes flow, and leases are renewed well inside claim_idle_s.
MIN_STALE_S = 60.0
STALE_CLAIM_FACTOR = 4
_OUTAGES: tuple[type[BaseException], ...] = (*DATABASE_DOWN, RedisError, OSError)
# The streams groups consume; the dead-letter stream is capped by length instead.
TRIMMED_STREAMS: tuple[str, ...] = (*DOWNLOAD_LANES, EVENTS_STREAM)
# Every command whose unfinished work PostgreSQL knows, in the order a pass brings them back.
COMMAND_KINDS: tuple[CommandKind, ...] = (
    DOWNLOADS,
    FILE_PROCESSING,
    COMPOSITES,
    EXPORTS,
    TASKS,
)


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one pass did; `ran` is False when another gateway held the lock.

    `lost` and `stale` count the commands re-published per kind name.
    """

    ran: bool
    lost: Mapping[str, int] = field(default_factory=dict)
    stale: Mapping[str, int] = field(default_factory=dict)
    timed_out_jobs: int = 0
    trimmed: int = 0

    @property
    def republished_lost(self) -> int:
        return sum(self.lost.values())

    @property
    def republished_stale(self) -> int:
        return sum(self.stale.values())


class Reconciler:
    """Runs `reconcile_once()` every `settings.reconcile_interval_s` until `stop()`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        settings: Settings,
        *,
        on_outbox_written: Callable[[], None] | None = None,
        batch_size: int = 1000,
        kinds: Sequence[CommandKind] = COMMAND_KINDS,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._settings = settings
        self._on_outbox_written = on_outbox_written
        self._batch_size = batch_size
        self._kinds = tuple(kinds)
        self._stopping = asyncio.Event()

    @property
    def stale_after_s(self) -> float:
        """How long started work (a download, an export) may go without any event before it
        is re-published."""
        return max(MIN_STALE_S, STALE_CLAIM_FACTOR * self._settings.claim_idle_s)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Reconcile every interval until `stop()`; outages are logged and waited out."""
        # Not at start: the relay publishes what is queued first, and a restarted fleet does
        # not run a pass per gateway at the same instant.
        while not await self._sleep(self._settings.reconcile_interval_s):
            try:
                await self.reconcile_once()
            except _OUTAGES as exc:
                log.warning("reconciler: %s: %s; trying again next pass", type(exc).__name__, exc)
            except Exception:
                # A bug must not end the loop for good: lost work would never come back.
                log.exception("reconcile pass failed")

    async def reconcile_once(self) -> ReconcileReport:
        """One pass, if no other gateway is running one."""
        async with self._pool.acquire() as lock_connection:
            # A session lock, held on this connection for the pass: it is released if this
            # process dies, and by closing the session should the unlock fail (the pool keeps
            # sessions as they are on release).
            if not await lock_connection.fetchval(
                "SELECT pg_try_advisory_lock($1)", RECONCILE_LOCK
            ):
                log.debug("reconcile pass skipped: another gateway holds the lock")
                return ReconcileReport(ran=False)
            try:
                report = await self._pass()
            finally:
                try:
                    await lock_connection.execute("SELECT pg_advisory_unlock($1)", RECONCILE_LOCK)
                except (*DATABASE_DOWN, asyncpg.InterfaceError):
                    lock_connection.terminate()
        written = report.republished_lost + report.republished_stale + report.timed_out_jobs
        if written and self._on_outbox_written is not None:
            self._on_outbox_written()
        if written or report.trimmed:
            log.info(
                "reconciled: %d lost and %d stale commands re-published, %d jobs timed out,"
                " %d stream entries trimmed",
                report.republished_lost,
                report.republished_stale,
                report.timed_out_jobs,
                report.trimmed,
                extra={"lost": dict(report.lost), "stale": dict(report.stale)},
            )
        return report

    async def _pass(self) -> ReconcileReport:
        # After a flush the groups are gone; recreated at id 0 they also see whatever was
        # published since. Consumers recreate their own, but the gateway may be first.
        await ensure_groups(self._redis, GROUPS)
        # Timeouts first: no point re-publishing work of a job that ends now.
        timed_out = await self._time_out_jobs()
        lost = {kind.name: await self._republish_lost(kind) for kind in self._kinds}
        stale = {kind.name: await self._republish_stale(kind) for kind in self._kinds}
        trimmed = await self._trim()
        return ReconcileReport(
            ran=True, lost=lost, stale=stale, timed_out_jobs=timed_out, trimmed=trimmed
        )

    # --- Redis loss -----------------------------------------------------------------------------

    async def _republish_lost(self, kind: CommandKind) -> int:
        """Open work whose command left the outbox but whose live marker is gone."""
        republished = 0
        after: str | None = None
        while True:
            async with self._pool.acquire() as connection:
                batch = await kind.sent(connection, after, self._batch_size)
            if not batch:
                return republished
            after = batch[-1].subject_id
            missing = await self._missing_live_keys(batch)
            if missing:
                async with self._pool.acquire() as connection, connection.transaction():
                    republished += await requeue(connection, kind, missing, headers=trace_headers())
            if len(batch) < self._batch_size:
                return republished

    async def _missing_live_keys(self, commands: Sequence[QueuedCommand]) -> list[QueuedCommand]:
        # One MGET per batch (a tenth of the client CPU of as many EXISTS). A Redis still
        # loading its data answers with an error, not with "missing", so a restart never looks
        # like a loss.
        if not commands:
            return []
        found = await self._redis.mget([live_key(command.key) for command in commands])
        return [command for command, marker in zip(commands, found, strict=True) if marker is None]

    async def _republish_stale(self, kind: CommandKind) -> int:
        """Started work of `kind` without any event for `stale_after_s`."""
        if kind.stale is None:
            return 0
        republished = 0
        while True:
            async with self._pool.acquire() as connection, connection.transaction():
                batch = await kind.stale(connection, self.stale_after_s, self._batch_size)
                # The rows written here exclude this work from the next query, so the loop
                # moves on without a cursor.
                written = await requeue(connection, kind, batch, headers=trace_headers())
            republished += written
            if len(batch) < self._batch_size or not written:
                return republished

    # --- job timeout ----------------------------------------------------------------------------

    async def _time_out_jobs(self) -> int:
        default_s = self._settings.job_timeout_s
        ended = 0
        while True:
            async with self._pool.acquire() as connection:
                jobs = await timed_out_jobs(
                    connection, default_timeout_s=default_s, limit=self._batch_size
                )
            ended_now = 0
            for job in jobs:
                if await self._time_out(job, default_s):
                    ended_now += 1
            ended += ended_now
            if len(jobs) < self._batch_size or not ended_now:
                return ended

    async def _time_out(self, job: TimedOutJob, default_s: float) -> bool:
        async with self._pool.acquire() as connection, connection.transaction():
            failed = await time_out_job(connection, job, default_timeout_s=default_s)
        if failed is None:
            return False
        log.warning(
            "job %s timed out after %d s; %d files failed", job.job_id, job.timeout_s, failed
        )
        # The user's cancel path: queued commands of the job are skipped, running ones aborted.
        await announce_cancel(self._redis, job.job_id, ttl_s=self._settings.retention_s)
        return True

    # --- bounded streams ------------------------------------------------------------------------

    async def _trim(self) -> int:
        trimmed = 0
        for stream in TRIMMED_STREAMS:
            trimmed += await trim_stream(self._redis, stream)
        await cap_dead_letters(self._redis)
        return trimmed

    async def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()
