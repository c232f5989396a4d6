"""The tracker: projects `downlink:events` into PostgreSQL and finishes jobs (the saga's end).

It reads the stream a batch at a time and runs each batch through one template, in one
transaction: the events' ids claimed in `processed_events` in one statement (a redelivered
event changes nothing), their jobs then their tasks locked in id order, then wave after wave
their history and their areas' projectors applied, a statement per event type and wave
(UPDATEs that only move state forward, so an event arriving out of order changes nothing
either), and last the job's end rule, once per job, which settles a job whose last file and
processing ended and queues its JobFinished event in the outbox. The entries are acknowledged
after the commit. A job's events get a span each; a batch's task events share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
from opentelemetry import trace
from opentelemetry.context import Context

from services.gateway.executions import history
from services.gateway.executions.journal import tag
from services.gateway.exports.projection import PROJECTORS as EXPORT_PROJECTORS
from services.gateway.jobs.lifecycle import lock_jobs, settle_job
from services.gateway.jobs.projection import PROJECTORS as FILE_PROJECTORS
from services.gateway.processing.projection import PROJECTORS as PROCESSING_PROJECTORS
from services.gateway.projection import LockAll, Projector, claim_events
from services.gateway.tasks.projection import PROJECTORS as TASK_PROJECTORS
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.errors import PoisonMessage
from shared.events import (
    EVENT_DECODER,
    ExportFailed,
    ExportProgress,
    ExportReady,
    FileDownloaded,
    FileFailed,
    FileProgress,
    FileRetrying,
    FileStarted,
    TaskEnqueued,
    TaskEvent,
)
from shared.postgres import DATABASE_DOWN
from shared.streams import EVENTS_STREAM, TRACKER_GROUP, consumer_name
from shared.telemetry import MAX_LINKS, span_context_of

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence
    from contextlib import AbstractContextManager

    from opentelemetry.trace import Span, TracerProvider
    from redis.asyncio import Redis

    from shared.events import PipelineEvent
    from shared.ids import JobId
    from shared.settings import Settings
    from shared.statuses import JobStatus

log = logging.getLogger(__name__)

# One batch in flight while the next is read; measured in the report of the batch change.
TRACKER_CONCURRENCY = 2
TRACKER_BATCH_SIZE = 256
# Group commit: a read that did not fill a batch waits this long before the next, so events
# arriving one by one share a transaction; a quiet stream's first event goes at once.
TRACKER_LINGER_S = 0.05
_MAX_DB_WAIT_S = 10.0

# Every projected event type and its area's projector. JobFinished (the tracker's own output)
# and FileRetrying are recorded in the history only.
PROJECTORS: dict[type, Projector] = {
    **FILE_PROJECTORS,
    **PROCESSING_PROJECTORS,
    **EXPORT_PROJECTORS,
    **TASK_PROJECTORS,
}
# The events that change one subject only: a file's download, an export. Any other event of a
# job (processing, its end) may read or change all of the job.
_FILE_EVENTS = (FileStarted, FileProgress, FileDownloaded, FileFailed, FileRetrying)
_EXPORT_EVENTS = (ExportProgress, ExportReady, ExportFailed)


async def project(connection: asyncpg.Connection, event: PipelineEvent) -> bool:
    """Apply one event to PostgreSQL; a replayed or out-of-order event changes nothing.

    Returns whether it may have queued outbox rows (a job's end, processing commands).
    """
    return await project_batch(connection, [event])


async def project_batch(
    connection: asyncpg.Connection,
    events: Sequence[PipelineEvent],
    *,
    spans: Mapping[str, Span] | None = None,
) -> bool:
    """Record and apply `events` in one transaction, as if applied one by one in this order;
    whether any may have queued outbox rows.

    Args:
        spans: the span of each event by id, for its history rows (else the current span).
    """
    async with connection.transaction():
        fresh = await _claim(connection, events)
        jobs = await lock_jobs(connection, {e.job_id for e in fresh if hasattr(e, "job_id")})
        locked = await _lock_all(connection, fresh)
        recorded: list[PipelineEvent] = []
        ended: set[JobId] = set()
        for wave in _waves(fresh):
            # First its history: a job's log is whole before the job ends.
            recorded += await history.record_wave(connection, wave, spans=spans)
            ended.update(await _apply_wave(connection, wave, jobs, locked))
        for job_id in sorted(ended):
            await settle_job(connection, job_id, jobs[job_id])
    history.count(recorded)
    return any(PROJECTORS[type(e)].writes_outbox for e in fresh if type(e) in PROJECTORS)


async def _claim(
    connection: asyncpg.Connection, events: Sequence[PipelineEvent]
) -> list[PipelineEvent]:
    """`events` without the replays: a claimed event counts once, at its first occurrence.

    Unclaimed ones (progress) stay, repeats and all: applied again they change nothing but
    what they changed the first time, as one by one.
    """
    claimed = list(dict.fromkeys(e.event_id for e in events if _claimed(e)))
    new = await claim_events(connection, claimed)
    fresh: list[PipelineEvent] = []
    for event in events:
        if not _claimed(event):
            fresh.append(event)
        elif event.event_id in new:
            new.discard(event.event_id)
            fresh.append(event)
    return fresh


def _claimed(event: PipelineEvent) -> bool:
    projector = PROJECTORS.get(type(event))
    return projector is not None and projector.claimed


def _waves(events: Sequence[PipelineEvent]) -> list[list[PipelineEvent]]:
    """Cut `events` into waves that give what applying them in order gives.

    A wave holds at most one event per subject (file, export, task), in their order, and an event
    that may touch all of its job is its job's only event in its wave. Events in one wave then
    commute, and each rule runs once per wave for all its events.
    """
    waves: list[list[PipelineEvent]] = []
    subject_next: dict[str, int] = {}  # the first wave a subject's next event may join
    job_next: dict[str, int] = {}  # the first wave after the job's last whole-job event
    job_last: dict[str, int] = {}  # the last wave holding an event of the job
    for event in events:
        job: str | None = getattr(event, "job_id", None)
        subjects = _subjects(event)
        floor = job_next.get(job, 0) if job is not None else 0
        if not subjects and job is not None:
            wave = max(floor, job_last.get(job, -1) + 1)
            job_next[job] = wave + 1
        else:
            keys = subjects or (event.event_id,)
            wave = max(floor, *(subject_next.get(key, 0) for key in keys))
            subject_next.update(dict.fromkeys(keys, wave + 1))
        if job is not None:
            job_last[job] = max(job_last.get(job, -1), wave)
        if wave == len(waves):
            waves.append([])
        waves[wave].append(event)
    return waves


def _subjects(event: PipelineEvent) -> tuple[str, ...]:
    if isinstance(event, _FILE_EVENTS):
        return (f"file:{event.file_id}",)
    if isinstance(event, _EXPORT_EVENTS):
        return (f"export:{event.export_id}",)
    if isinstance(event, TaskEnqueued):
        # It reads its parent's row: after the enqueue that wrote the parent (a follow-up's
        # own follow-up), never in the same wave.
        return (f"task:{event.task_id}", f"task:{event.parent_id}")
    if isinstance(event, TaskEvent):
        return (f"task:{event.task_id}",)
    return ()


async def _lock_all(connection: asyncpg.Connection, events: Sequence[PipelineEvent]) -> set[str]:
    """Each `lock_all` once, for the batch's events that share it; the ids of those whose
    subject is on record, locked."""
    by_lock: dict[LockAll, list[PipelineEvent]] = {}
    for event in events:
        projector = PROJECTORS.get(type(event))
        if projector is not None and projector.lock_all is not None:
            by_lock.setdefault(projector.lock_all, []).append(event)
    locked: set[str] = set()
    for lock_all, part in by_lock.items():
        locked.update(await lock_all(connection, part))
    return locked


async def _apply_wave(
    connection: asyncpg.Connection,
    wave: Sequence[PipelineEvent],
    jobs: Mapping[JobId, JobStatus],
    locked: Collection[str],
) -> set[JobId]:
    """Each projector once for its events of the wave whose subject is on record (locked)."""
    by_type: dict[type, list[Any]] = {}
    for event in wave:
        if type(event) in PROJECTORS:
            by_type.setdefault(type(event), []).append(event)
    ended: set[JobId] = set()
    for kind, events in by_type.items():
        projector = PROJECTORS[kind]
        known = [e for e in events if await _on_record(connection, projector, e, jobs, locked)]
        if known:
            ended.update(await projector.apply(connection, known))
    return ended


async def _on_record(
    connection: asyncpg.Connection,
    projector: Projector,
    event: Any,
    jobs: Mapping[JobId, JobStatus],
    locked: Collection[str],
) -> bool:
    if event.event_id in locked:
        return True
    if projector.lock is not None:
        return await projector.lock(connection, event)
    return projector.lock_all is None and event.job_id in jobs


class Tracker:
    """Consumes `downlink:events` in the tracker group and projects it a batch at a time."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        settings: Settings,
        *,
        on_outbox_written: Callable[[], None] | None = None,
        tracer_provider: TracerProvider | None = None,
        concurrency: int = TRACKER_CONCURRENCY,
        batch_size: int = TRACKER_BATCH_SIZE,
    ) -> None:
        self._pool = pool
        self._tracer = trace.get_tracer("downlink.tracker", tracer_provider=tracer_provider)
        self._on_outbox_written = on_outbox_written
        self._stopping = asyncio.Event()
        self.consumer = StreamConsumer(
            redis,
            streams=[EVENTS_STREAM],
            group=TRACKER_GROUP,
            consumer=consumer_name(),
            handler=self._handle,
            batch_handler=self._handle_batch,
            batch_size=batch_size,
            batch_linger_s=TRACKER_LINGER_S,
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
        """One entry (a reclaimed one, or each of a batch that failed): a bad one is poison."""
        try:
            event = EVENT_DECODER.decode(delivery.body)
        except msgspec.DecodeError as exc:
            raise PoisonMessage(f"undecodable event {delivery.entry_id}: {exc}") from exc
        history.describe_span(event)
        try:
            await self._project_until_done([event])
        except asyncpg.DataError as exc:
            raise PoisonMessage(f"event {event.event_id} does not fit: {exc}") from exc

    async def _handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        """A whole read in one transaction. Whatever fails it (an undecodable entry, an event
        that does not fit) raises, and the consumer hands each entry to `_handle` instead."""
        events = [EVENT_DECODER.decode(delivery.body) for delivery in deliveries]
        with contextlib.ExitStack() as stack:
            # Each event of a job its own span, a child of its publisher's: one trace per
            # request still, and the span its history rows name.
            spans: dict[str, Span] = {}
            of_tasks: list[tuple[Delivery, TaskEvent]] = []
            for delivery, event in zip(deliveries, events, strict=True):
                if isinstance(event, TaskEvent):
                    of_tasks.append((delivery, event))
                    continue
                spans[event.event_id] = stack.enter_context(self.consumer.span_for(delivery))
                history.describe_span(event, spans[event.event_id])
            for first in range(0, len(of_tasks), MAX_LINKS):
                stack.enter_context(self._span_of_tasks(of_tasks[first : first + MAX_LINKS]))
            await self._project_until_done(events, spans)

    def _span_of_tasks(
        self, received: Sequence[tuple[Delivery, TaskEvent]]
    ) -> AbstractContextManager[Span]:
        """One span for many task events, linked to each one's publisher, so each task's trace
        still leads here: a span per event took a quarter of the tracker's CPU on no-op tasks,
        and a task's events write no row naming their span."""
        links = [
            trace.Link(
                context,
                {
                    "messaging.message.id": delivery.entry_id,
                    "downlink.event": tag(event),
                    "downlink.task_id": event.task_id,
                },
            )
            for delivery, event in received
            if (context := span_context_of(str(delivery.headers.get("traceparent", ""))))
        ]
        return self._tracer.start_as_current_span(
            f"{EVENTS_STREAM} process",
            # A root of its own, even opened after the spans of a job's events.
            context=Context(),
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "redis",
                "messaging.destination.name": EVENTS_STREAM,
                "messaging.batch.message_count": len(received),
                "messaging.consumer.group.name": TRACKER_GROUP,
            },
        )

    async def _project_until_done(
        self, events: Sequence[PipelineEvent], spans: Mapping[str, Span] | None = None
    ) -> None:
        # PostgreSQL is the record: while it is down, hold the entries (their leases are
        # renewed) instead of burning retries towards the dead-letter stream. On shutdown the
        # task is cancelled and the entries stay pending for the next start.
        delay_s = 0.5
        while True:
            try:
                async with self._pool.acquire() as connection:
                    wrote_outbox = await project_batch(connection, events, spans=spans)
                break
            except DATABASE_DOWN as exc:
                log.warning("tracker: PostgreSQL unavailable (%s); retrying in %.1fs", exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _MAX_DB_WAIT_S)
        if wrote_outbox and self._on_outbox_written:
            # A job may have finished (its JobFinished row should leave now, not at the poll),
            # or a download queued its processing: once per batch.
            self._on_outbox_written()
