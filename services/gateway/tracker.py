"""The tracker: projects `downlink:events` into PostgreSQL and finishes jobs (the saga's end).

Each event is applied in one transaction together with its id in `processed_events`, so a
redelivered event changes nothing; the UPDATEs only move state forward, so an event arriving out
of order changes nothing either. When a job's last file reaches a final state, the same
transaction settles the job and queues its JobFinished event in the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from services.gateway import exports, history, processing, repository
from services.gateway.relay import trace_headers
from services.gateway.repository import DATABASE_DOWN
from services.gateway.statuses import FINAL_JOB_STATUSES, JobStatus
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.errors import PoisonMessage
from shared.events import (
    ENCODER,
    EVENT_DECODER,
    ArtifactCreated,
    CompositeFinished,
    ExportEvent,
    FileDownloaded,
    FileFailed,
    FileProcessed,
    FileProgress,
    FileStarted,
    JobFinished,
)
from shared.ids import new_event_id
from shared.streams import EVENTS_STREAM, TRACKER_GROUP, consumer_name

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.trace import TracerProvider
    from redis.asyncio import Redis

    from shared.events import PipelineEvent
    from shared.ids import JobId
    from shared.settings import Settings

log = logging.getLogger(__name__)

TRACKER_CONCURRENCY = 8
# Events whose projection may queue outgoing rows: a job's end, processing commands.
_MAY_WRITE_OUTBOX = (
    FileDownloaded,
    FileFailed,
    ArtifactCreated,
    FileProcessed,
    CompositeFinished,
)
_MAX_DB_WAIT_S = 10.0


async def project(connection: asyncpg.Connection, event: PipelineEvent) -> None:
    """Apply one event to PostgreSQL; a replayed or out-of-order event changes nothing."""
    await history.record(connection, event)  # first: a job's log is whole before it can end
    if isinstance(event, ExportEvent):  # an export has an export_id, not a job_id
        await exports.project_export_event(connection, event)
        return
    if isinstance(event, ArtifactCreated | FileProcessed | CompositeFinished):
        await processing.project(connection, event, settle=settle_job)
        return
    if not isinstance(event, FileStarted | FileProgress | FileDownloaded | FileFailed):
        return  # JobFinished is the tracker's own output; the rest are not projected yet
    if isinstance(event, FileProgress):
        # Not recorded in processed_events: progress is idempotent by itself (GREATEST, and
        # only while downloading) and far too frequent to keep a row per event.
        await repository.file_progress(connection, event)
        return
    async with connection.transaction():
        if not await repository.claim_event(connection, event.event_id):
            return
        # Locking the job first serialises the events of one job and orders the locks the way
        # cancellation does (job, then files), so the two cannot deadlock.
        job_status = await repository.lock_job(connection, event.job_id)
        if job_status is None:
            return
        if isinstance(event, FileStarted):
            if await repository.file_started(connection, event):
                await repository.mark_job_in_progress(connection, event.job_id)
            return
        if isinstance(event, FileDownloaded):
            changed = await repository.file_downloaded(connection, event)
            if changed:  # queues its processing and the composites now complete
                await processing.after_download(connection, event)
        else:
            changed = await repository.file_failed(connection, event)
        if changed:
            await settle_job(connection, event.job_id, job_status)


async def settle_job(connection: asyncpg.Connection, job_id: JobId, status: JobStatus) -> None:
    """Finish the job when none of its files is open any more (the caller locked the job row).

    The one rule for a job's end (completed, partial or failed) and its JobFinished event:
    the tracker applies it after each file's end, the reconciler after a job timed out.
    """
    if status in FINAL_JOB_STATUSES:
        return  # cancelled stays cancelled
    counts = await repository.file_counts(connection, job_id)
    if counts.open:
        await repository.mark_job_in_progress(connection, job_id)
        return
    if await processing.open_work(connection, job_id):  # a job ends after its processing
        await repository.mark_job_in_progress(connection, job_id)
        return
    if counts.completed == counts.total:
        final = JobStatus.COMPLETED
    elif counts.completed:
        final = JobStatus.PARTIAL
    else:
        final = JobStatus.FAILED
    await repository.finish_job(connection, job_id, final)
    finished = JobFinished(
        event_id=new_event_id(),
        job_id=job_id,
        at=time.time(),
        status=final,
        successful=counts.completed,
        failed=counts.failed + counts.cancelled,
    )
    await repository.add_to_outbox(
        connection, EVENTS_STREAM, ENCODER.encode(finished), headers=trace_headers()
    )
    await exports.export_finished_job(connection, job_id, final)  # when the job asked for one
    log.info("job %s finished: %s (%d of %d stored)", job_id, final, counts.completed, counts.total)


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
        await self._project_until_done(event)
        if isinstance(event, _MAY_WRITE_OUTBOX) and self._on_outbox_written:
            # The job may have finished (its JobFinished row should leave now, not at the poll),
            # or a download queued its processing.
            self._on_outbox_written()

    async def _project_until_done(self, event: PipelineEvent) -> None:
        # PostgreSQL is the record: while it is down, hold the entry (its lease is renewed)
        # instead of burning retries towards the dead-letter stream. On shutdown the task is
        # cancelled and the entry stays pending for the next start.
        delay_s = 0.5
        while True:
            try:
                async with self._pool.acquire() as connection:
                    await project(connection, event)
            except asyncpg.DataError as exc:
                raise PoisonMessage(f"event {event.event_id} does not fit: {exc}") from exc
            except DATABASE_DOWN as exc:
                log.warning("tracker: PostgreSQL unavailable (%s); retrying in %.1fs", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _MAX_DB_WAIT_S)
            else:
                return
