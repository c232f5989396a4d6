"""The one consumer machinery: read lanes by priority, hand entries to a handler.

It knows nothing of downloads: a service hands it streams, a group, a handler and a policy.
How an entry is settled (ack, retry, dead letter) is shared.outcomes; leases and the reclaim of
a dead consumer's entries come from shared.reclaim.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import metrics
from shared.deliveries import (
    ATTEMPT_HEADER,
    BatchHandler,
    ConsumerPolicy,
    ConsumerStats,
    DeadHook,
    DeadLetter,
    Delivery,
    Handler,
    RetryHook,
    decode_delivery,
)
from shared.errors import JobCancelled, PermanentError, PoisonMessage, TransientError
from shared.outcomes import Outcomes
from shared.reclaim import Claimed, Reclaimer
from shared.streams import DATA_FIELD
from shared.telemetry import links_from

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Re-exported: services and tests import the consumer's vocabulary from here.
__all__ = [
    "ATTEMPT_HEADER",
    "BatchHandler",
    "ConsumerPolicy",
    "ConsumerStats",
    "DeadLetter",
    "Delivery",
    "StreamConsumer",
    "ensure_groups",
]

log = logging.getLogger(__name__)

_READ_BLOCK_MS = 1000
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass
class StreamConsumer:
    """Consumes `streams` (highest priority first) in `group` as `consumer`."""

    redis: Redis
    streams: Sequence[str]
    group: str
    consumer: str
    handler: Handler
    policy: ConsumerPolicy = field(default_factory=ConsumerPolicy)
    on_dead: DeadHook | None = None
    tracer_provider: trace.TracerProvider | None = None
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    on_retry: RetryHook | None = None
    batch_handler: BatchHandler | None = None
    batch_size: int = 1
    # After a read that did not fill a batch, wait this long before the next: entries gather
    # into fewer, fuller batches (group commit). The first entry after a quiet spell still
    # goes at once; only those that follow it wait, by this much at most.
    batch_linger_s: float = 0.0

    def __post_init__(self) -> None:
        # A slot is one entry in flight, or with a batch handler one batch.
        self._slots = asyncio.Semaphore(self.policy.concurrency)
        self._outcomes = Outcomes(
            self.redis,
            self.group,
            self.consumer,
            self.policy,
            self.stats,
            on_dead=self.on_dead,
            on_retry=self.on_retry,
        )
        self._stopping = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], list[tuple[str, str]]] = {}
        self._tracer = trace.get_tracer("downlink.consumer", tracer_provider=self.tracer_provider)
        self._reclaimer = Reclaimer(
            self.redis, tuple(self.streams), self.group, self.consumer, self.policy.claim_idle_s
        )

    async def run(self) -> None:
        """Consume until `stop()`; in-flight work then gets the grace period to finish."""
        await ensure_groups(self.redis, {self.group: tuple(self.streams)})
        background = [
            asyncio.create_task(self._every(self.policy.lease_renew_s, self._renew_leases)),
            asyncio.create_task(self._every(self._reclaimer.interval_s, self._reclaim)),
            asyncio.create_task(self._every(0.5, self._outcomes.move_due_retries)),
        ]
        try:
            await self._read_loop()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    def stop(self) -> None:
        """Stop reading; `run()` returns once in-flight work ends or the grace runs out."""
        self._stopping.set()

    # --- reading ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while await self._take_slot():
            held = 1 if self.batch_handler else 1 + await self._take_free_slots()
            count = self.batch_size if self.batch_handler else held
            try:
                entries = await self._read_next(count)
            except ResponseError as exc:
                self._release(held)
                if not _stream_vanished(exc):
                    log.exception("reading %s failed", ", ".join(self.streams))
                    await self._sleep_unless_stopping(1.0)
                    continue
                # The stream or group vanished (a flush): recreate and go on reading.
                log.warning("consumer group %s missing; recreating it", self.group)
                await ensure_groups(self.redis, {self.group: tuple(self.streams)})
                continue
            except _REDIS_DOWN as exc:
                self._release(held)
                log.warning("redis unreachable while reading: %s", exc)
                await self._sleep_unless_stopping(1.0)
                continue
            if self.batch_handler is not None and entries:
                self._spawn_batch(entries)
                if len(entries) < count and self.batch_linger_s:
                    await self._sleep_unless_stopping(self.batch_linger_s)
                continue
            self._release(held - len(entries))
            for stream, entry_id, fields in entries:
                self._spawn(stream, entry_id, fields, delivery_count=1, has_slot=True)

    async def _take_free_slots(self) -> int:
        """Take every slot free right now, without waiting: one read fills them all."""
        taken = 0
        while not self._slots.locked():
            await self._slots.acquire()  # returns at once: a free slot never suspends
            taken += 1
        return taken

    def _release(self, slots: int) -> None:
        for _ in range(slots):
            self._slots.release()

    async def _take_slot(self) -> bool:
        """Wait for a free slot; False, holding none, once the consumer is stopping.

        A stop must neither wait behind busy handlers for a slot nor take new work after.
        """
        if self._stopping.is_set():
            return False
        if not self._slots.locked():
            return await self._slots.acquire()
        acquire = asyncio.ensure_future(self._slots.acquire())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((acquire, stopping), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._give_back(acquire)
            raise
        finally:
            stopping.cancel()
        if acquire.done() and not self._stopping.is_set():
            return True
        self._give_back(acquire)
        return False

    def _give_back(self, acquire: asyncio.Task[Any]) -> None:
        # Semaphore.acquire returns the slot itself when cancelled after being granted one.
        if not acquire.done():
            acquire.cancel()
        elif not acquire.cancelled():
            self._slots.release()

    async def _read_next(self, count: int) -> list[tuple[str, str, dict[bytes, bytes]]]:
        # Highest lane first, without blocking, each lane filling what the ones above left;
        # only when all are empty block on all of them.
        entries: list[tuple[str, str, dict[bytes, bytes]]] = []
        for stream in self.streams:
            response = await self.redis.xreadgroup(
                self.group, self.consumer, {stream: ">"}, count=count - len(entries)
            )
            if response:
                entries += _flatten(response)
                if len(entries) >= count:
                    return entries
        if entries or self._stopping.is_set():
            return entries
        response = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self.streams, ">"),
            count=count,
            block=_READ_BLOCK_MS,
        )
        return _flatten(response) if response else []

    def _spawn(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        *,
        delivery_count: int,
        has_slot: bool,
    ) -> None:
        task = asyncio.create_task(
            self._run_entry(stream, entry_id, fields, delivery_count, has_slot),
            name=f"{self.group}:{stream}:{entry_id}",
        )
        self._in_flight[task] = [(stream, entry_id)]
        task.add_done_callback(self._in_flight.pop)

    async def _run_entry(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        delivery_count: int,
        has_slot: bool,
    ) -> None:
        if not has_slot:
            await self._slots.acquire()
        self.stats.in_flight += 1
        in_flight = metrics.IN_FLIGHT.labels(self.group)
        in_flight.inc()
        try:
            await self._handle(stream, entry_id, fields, delivery_count)
        finally:
            self.stats.in_flight -= 1
            in_flight.dec()
            self._slots.release()

    async def _handle(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], delivery_count: int
    ) -> None:
        frame = fields.get(DATA_FIELD, b"")
        delivery = decode_delivery(stream, entry_id, frame, delivery_count)
        with self.span_for(delivery) as span:
            began = time.monotonic()
            # Whatever ends the handler without an outcome below (a shutdown cancelling it)
            # leaves the entry pending for a reclaim: abandoned, not failed.
            outcome = "abandoned"
            try:
                outcome = await self._run_handler(delivery, frame, span)
            finally:
                span.set_attribute("downlink.outcome", outcome)
                metrics.observe_task(self.group, outcome, time.monotonic() - began)

    def span_for(self, delivery: Delivery) -> AbstractContextManager[trace.Span]:
        """The consumer span of one delivery, a child of its publisher's span: one trace from
        the request that caused the work. A batch handler opens one per entry it projects."""
        return self._tracer.start_as_current_span(
            f"{delivery.stream} process",
            context=propagate.extract(delivery.headers),
            kind=trace.SpanKind.CONSUMER,
            links=links_from(delivery.headers),
            attributes={
                "messaging.system": "redis",
                "messaging.destination.name": delivery.stream,
                "messaging.message.id": delivery.entry_id,
                "messaging.consumer.group.name": self.group,
                "messaging.consumer.name": self.consumer,
                "downlink.attempt": delivery.attempt,
            },
        )

    async def _run_handler(self, delivery: Delivery, frame: bytes, span: trace.Span) -> str:
        """Run the handler and settle the entry; returns the outcome."""
        try:
            if not frame or not delivery.body:
                raise PoisonMessage(
                    f"entry {delivery.entry_id} of {delivery.stream} has no readable body"
                )
            await self.handler(delivery)
        except JobCancelled:
            await self._outcomes.ack(delivery)
            return "cancelled"
        except PermanentError as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, str(exc))
            await self._outcomes.dead_letter(delivery, exc)
            return "dead"
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.StatusCode.ERROR, str(exc))
            if delivery.attempt >= self.policy.max_tries:
                await self._outcomes.dead_letter(delivery, exc)
                return "dead"
            retry_after = exc.retry_after_s if isinstance(exc, TransientError) else None
            await self._outcomes.retry_later(delivery, frame, retry_after, exc)
            return "retried"
        self.stats.processed += 1
        await self._outcomes.ack(delivery)
        return "completed"

    # --- batches ------------------------------------------------------------------------------

    def _spawn_batch(self, entries: list[tuple[str, str, dict[bytes, bytes]]]) -> None:
        task = asyncio.create_task(self._run_batch(entries), name=f"{self.group}:batch")
        # Leases are renewed for every entry of the batch while it runs.
        self._in_flight[task] = [(stream, entry_id) for stream, entry_id, _ in entries]
        task.add_done_callback(self._in_flight.pop)

    async def _run_batch(self, entries: list[tuple[str, str, dict[bytes, bytes]]]) -> None:
        assert self.batch_handler is not None
        deliveries = [
            decode_delivery(stream, entry_id, fields.get(DATA_FIELD, b""), 1)
            for stream, entry_id, fields in entries
        ]
        self.stats.in_flight += len(deliveries)
        in_flight = metrics.IN_FLIGHT.labels(self.group)
        in_flight.inc(len(deliveries))
        began = time.monotonic()
        try:
            try:
                await self.batch_handler(deliveries)
            except Exception:
                log.warning(
                    "batch of %d from %s failed; handling its entries one by one",
                    len(deliveries),
                    self.group,
                    exc_info=True,
                )
                for stream, entry_id, fields in entries:
                    await self._handle(stream, entry_id, fields, 1)
                return
            await self._outcomes.ack_all(deliveries)
            self.stats.processed += len(deliveries)
            elapsed = (time.monotonic() - began) / len(deliveries)
            for _ in deliveries:
                metrics.observe_task(self.group, "completed", elapsed)
        finally:
            self.stats.in_flight -= len(deliveries)
            in_flight.dec(len(deliveries))
            self._slots.release()

    # --- background loops ---------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        await self._reclaimer.renew(itertools.chain.from_iterable(self._in_flight.values()))

    async def _reclaim(self) -> None:
        streams = list(self.streams)
        # Wait for a slot rather than skip while none is free: with concurrency 1 the read loop
        # holds the only slot during its blocking read, and reclaim would never run.
        while streams and await self._take_slot():
            try:
                claimed = await self._claim_next(streams)
            except BaseException:
                self._slots.release()
                raise
            if claimed is None or self._stopping.is_set():
                # Nothing idle; or stopping, when a claimed entry stays pending for others.
                self._slots.release()
                break
            log.info(
                "reclaimed %s entry %s (delivery %d)",
                claimed.stream,
                claimed.entry_id,
                claimed.delivery_count,
            )
            self._spawn(
                claimed.stream,
                claimed.entry_id,
                claimed.fields,
                delivery_count=claimed.delivery_count,
                has_slot=True,
            )
        await self._reclaimer.forget_dead_consumers()

    async def _claim_next(self, streams: list[str]) -> Claimed | None:
        """The next idle entry, highest stream first; streams found empty are dropped."""
        while streams:
            claimed, gone = await self._reclaimer.claim_idle(streams[0])
            if gone:
                # Deleted from the stream while pending: nothing to run, only the PEL to clean.
                await self.redis.xack(streams[0], self.group, *gone)
            if claimed is not None:
                return claimed
            streams.pop(0)
        return None

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await step()
            except ResponseError as exc:
                if not _stream_vanished(exc):
                    log.exception("%s failed", step.__name__)
            except _REDIS_DOWN as exc:
                log.warning("redis unreachable in %s: %s", step.__name__, exc)
            except Exception:
                log.exception("%s failed", step.__name__)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A library swallowed our cancel (asyncio.wait_for on Python 3.11 does when the
                # awaited call ends at the same moment, and redis-py wraps every send in it).
                raise asyncio.CancelledError

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        tasks = set(self._in_flight)
        log.info(
            "waiting up to %.0fs for %d in-flight entries", self.policy.shutdown_grace_s, len(tasks)
        )
        _done, still_running = await asyncio.wait(tasks, timeout=self.policy.shutdown_grace_s)
        for task in still_running:
            # Left unacknowledged: another consumer reclaims them after the idle threshold.
            task.cancel()
        await asyncio.gather(*still_running, return_exceptions=True)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def ensure_groups(redis: Redis, groups: dict[str, tuple[str, ...]]) -> None:
    """Create each group on each stream at id 0, so nothing published before is skipped."""
    for group, streams in groups.items():
        for stream in streams:
            try:
                await redis.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


def _stream_vanished(error: ResponseError) -> bool:
    # NOGROUP: the group is gone; UNBLOCKED: the stream was deleted under a blocking read.
    return any(code in str(error) for code in ("NOGROUP", "UNBLOCKED"))


def _flatten(response: Any) -> list[tuple[str, str, dict[bytes, bytes]]]:
    return [
        (_text(stream), _text(entry_id), fields)
        for stream, entries in response
        for entry_id, fields in entries
        if fields
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
