"""The tracker: projects `downlink:events` into PostgreSQL and finishes jobs (the saga's end).

Every event goes through one template: its history first, then in one transaction its id
claimed in `processed_events` (a redelivered event changes nothing), its subject locked, its
area's projector applied (UPDATEs that only move state forward, so an event arriving out of
order changes nothing either), and the job's end rule, which settles the job once its last
file and its processing ended and queues its JobFinished event in the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from services.gateway.executions import history
from services.gateway.exports.projection import PROJECTORS as EXPORT_PROJECTORS
from services.gateway.jobs.lifecycle import settle_job
from services.gateway.jobs.projection import PROJECTORS as FILE_PROJECTORS
from services.gateway.processing.projection import PROJECTORS as PROCESSING_PROJECTORS
from services.gateway.projection import Projector, claim_event
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.errors import PoisonMessage
from shared.events import EVENT_DECODER
from shared.postgres import DATABASE_DOWN
from shared.streams import EVENTS_STREAM, TRACKER_GROUP, consumer_name

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opentelemetry.trace import TracerProvider
    from redis.asyncio import Redis

    from shared.events import PipelineEvent
    from shared.settings import Settings

log = logging.getLogger(__name__)

TRACKER_CONCURRENCY = 8
_MAX_DB_WAIT_S = 10.0

# Every projected event type and its area's projector. JobFinished (the tracker's own output)
# and FileRetrying are recorded in the history only.
PROJECTORS: dict[type, Projector] = {
    **FILE_PROJECTORS,
    **PROCESSING_PROJECTORS,
    **EXPORT_PROJECTORS,
}


async def project(connection: asyncpg.Connection, event: PipelineEvent) -> bool:
    """Apply one event to PostgreSQL; a replayed or out-of-order event changes nothing.

    Returns whether it may have queued outbox rows (a job's end, processing commands).
    """
    return await project_batch(connection, [event])


async def project_batch(connection: asyncpg.Connection, events: Sequence[PipelineEvent]) -> bool:
    """Apply `events` in order, their projections in one transaction; whether any may have
    queued outbox rows."""
    for event in events:
        await history.record(connection, event)  # first: a job's log is whole before it ends
    projected = [(PROJECTORS[type(e)], e) for e in events if type(e) in PROJECTORS]
    if not projected:
        return False
    async with connection.transaction():
        for projector, event in projected:
            await _apply(connection, projector, event)
    return any(projector.writes_outbox for projector, _ in projected)


async def _apply(
    connection: asyncpg.Connection, projector: Projector, event: PipelineEvent
) -> None:
    """The template, inside the caller's transaction: claim, lock, apply, settle."""
    if projector.claimed and not await claim_event(connection, event.event_id):
        return
    locked = await projector.lock(connection, event)
    if locked is None:
        return
    ended = await projector.apply(connection, event)
    if ended and locked.job_id is not None and locked.job_status is not None:
        await settle_job(connection, locked.job_id, locked.job_status)


class Tracker:
    """Consumes `downlink:events` in the tracker group and projects every event."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        settings: Settings,
        *,
        on_outbox_written: Callable[[], None] | None = None,
        tracer_provider: TracerProvider | None = None,
        concurrency: int = TRACKER_CONCURRENCY,
    ) -> None:
        self._pool = pool
        self._on_outbox_written = on_outbox_written
        self._stopping = asyncio.Event()
        self.consumer = StreamConsumer(
            redis,
            streams=[EVENTS_STREAM],
            group=TRACKER_GROUP,
            consumer=consumer_name(),
            handler=self._handle,
            policy=ConsumerPolicy.from_settings(settings, concurrency=concurrency),
            tracer_provider=tracer_provider,
        )

    async def run(self) -> None:
        """Consume until `stop()`; a crash of the consumer is logged and it starts again."""
        delay_s = 1.0
        while not self._stopping.is_set():
            try:
                await self.consumer.run()
            except Exception:
                log.exception("tracker consumer stopped unexpectedly; restarting in %.0fs", delay_s)
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay_s)
                except TimeoutError:
                    delay_s = min(delay_s * 2, 30.0)
            else:
                return

    def stop(self) -> None:
        self._stopping.set()
        self.consumer.stop()

    async def _handle(self, delivery: Delivery) -> None:
        try:
            event = EVENT_DECODER.decode(delivery.body)
        except msgspec.DecodeError as exc:
            raise PoisonMessage(f"undecodable event {delivery.entry_id}: {exc}") from exc
        wrote_outbox = await self._project_until_done(event)
        if wrote_outbox and self._on_outbox_written:
            # The job may have finished (its JobFinished row should leave now, not at the poll),
            # or a download queued its processing.
            self._on_outbox_written()

    async def _project_until_done(self, event: PipelineEvent) -> bool:
        # PostgreSQL is the record: while it is down, hold the entry (its lease is renewed)
        # instead of burning retries towards the dead-letter stream. On shutdown the task is
        # cancelled and the entry stays pending for the next start.
        delay_s = 0.5
        while True:
            try:
                async with self._pool.acquire() as connection:
                    return await project(connection, event)
            except asyncpg.DataError as exc:
                raise PoisonMessage(f"event {event.event_id} does not fit: {exc}") from exc
            except DATABASE_DOWN as exc:
                log.warning("tracker: PostgreSQL unavailable (%s); retrying in %.1fs", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _MAX_DB_WAIT_S)
