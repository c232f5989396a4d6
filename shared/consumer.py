"""The one consumer machinery: read lanes by priority, run a handler, ack, retry or dead-letter.

It knows nothing of downloads: a service hands it streams, a group, a handler and a policy.
This is the only code that acknowledges. FastStream's nack/reject do nothing on Redis Streams,
so retries (a delayed re-publish with backoff) and dead letters are built here on redis-py;
leases and the reclaim of a dead consumer's entries come from shared.reclaim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from faststream.redis.parser import BinaryMessageFormatV1
from opentelemetry import propagate, trace
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import metrics
from shared.errors import JobCancelled, PermanentError, PoisonMessage, TransientError
from shared.reclaim import Claimed, Reclaimer
from shared.streams import DEAD_STREAM, DELAYED_KEY
from shared.telemetry import links_from

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.settings import Settings

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "downlink-attempt"
DATA_FIELD = b"__data__"
_READ_BLOCK_MS = 1000
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

# Moves due retries back onto their stream in one atomic step, so a crash between the two
# writes can neither lose nor duplicate a retry. Member: stream name, "\n", the stream frame.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local sep = string.find(member, '\\n', 1, true)
  redis.call('XADD', string.sub(member, 1, sep - 1), '*', '__data__', string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to a handler.

    Attributes:
        stream: the stream it was read from.
        entry_id: its Redis entry id.
        body: the message body (JSON).
        headers: the frame's headers (traceparent, correlation id, attempt).
        attempt: 1 on the first try; counts retries and crashed deliveries.
    """

    stream: str
    entry_id: str
    body: bytes
    headers: dict[str, Any]
    attempt: int


Handler = Callable[[Delivery], Awaitable[None]]
DeadHook = Callable[[Delivery, BaseException], Awaitable[None]]
# Called once a failed try is scheduled again: the delivery, its error, the delay in seconds.
RetryHook = Callable[[Delivery, BaseException, float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConsumerPolicy:
    """How a consumer paces, retries and gives up; plain data so user tasks can carry one."""

    concurrency: int = 1
    max_tries: int = 3
    retry_backoff_s: float = 5.0
    claim_idle_s: float = 30.0
    lease_renew_s: float = 5.0
    shutdown_grace_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, *, concurrency: int) -> ConsumerPolicy:
        """The policy every service derives from DOWNLINK_* settings."""
        return cls(
            concurrency=concurrency,
            max_tries=settings.max_tries,
            retry_backoff_s=settings.retry_backoff_s,
            claim_idle_s=settings.claim_idle_s,
            lease_renew_s=settings.lease_renew_s,
            shutdown_grace_s=settings.shutdown_grace_s,
        )

    def backoff_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Delay before try `attempt + 1`: doubling from the base, with jitter."""
        if retry_after_s is not None:
            return retry_after_s
        base: float = self.retry_backoff_s * 2 ** (attempt - 1)
        return base * random.uniform(0.8, 1.2)


@dataclass(slots=True)
class ConsumerStats:
    """Counts a worker reports about itself."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    in_flight: int = 0


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

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.policy.concurrency)
        self._stopping = asyncio.Event()
        self._in_flight: dict[asyncio.Task[None], tuple[str, str]] = {}
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
            asyncio.create_task(self._every(0.5, self._move_due_retries)),
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
            try:
                entries = await self._read_next()
            except ResponseError as exc:
                self._slots.release()
                if not _stream_vanished(exc):
                    log.exception("reading %s failed", ", ".join(self.streams))
                    await self._sleep_unless_stopping(1.0)
                    continue
                # The stream or group vanished (a flush): recreate and go on reading.
                log.warning("consumer group %s missing; recreating it", self.group)
                await ensure_groups(self.redis, {self.group: tuple(self.streams)})
                continue
            except _REDIS_DOWN as exc:
                self._slots.release()
                log.warning("redis unreachable while reading: %s", exc)
                await self._sleep_unless_stopping(1.0)
                continue
            if not entries:
                self._slots.release()
                continue
            for index, (stream, entry_id, fields) in enumerate(entries):
                self._spawn(stream, entry_id, fields, delivery_count=1, has_slot=index == 0)

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

    async def _read_next(self) -> list[tuple[str, str, dict[bytes, bytes]]]:
        # Highest lane first, without blocking; only when all are empty block on all of them.
        for stream in self.streams:
            response = await self.redis.xreadgroup(
                self.group, self.consumer, {stream: ">"}, count=1
            )
            if response:
                return _flatten(response)
        if self._stopping.is_set():
            return []
        response = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self.streams, ">"),
            count=1,
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
        self._in_flight[task] = (stream, entry_id)
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
        try:
            body, headers = BinaryMessageFormatV1.parse(frame)
        except Exception:
            body, headers = frame, {}
        earlier = _int_header(headers, ATTEMPT_HEADER)
        delivery = Delivery(stream, entry_id, body, headers, attempt=earlier + delivery_count)
        # The publisher's span is the parent: one trace from the request that caused the work.
        parent = propagate.extract(headers)
        with self._tracer.start_as_current_span(
            f"{stream} process",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=links_from(headers),
            attributes={
                "messaging.system": "redis",
                "messaging.destination.name": stream,
                "messaging.message.id": entry_id,
                "messaging.consumer.group.name": self.group,
                "messaging.consumer.name": self.consumer,
                "downlink.attempt": delivery.attempt,
            },
        ) as span:
            began = time.monotonic()
            # Whatever ends the handler without an outcome below (a shutdown cancelling it)
            # leaves the entry pending for a reclaim: abandoned, not failed.
            outcome = "abandoned"
            try:
                try:
                    if not frame or not body:
                        raise PoisonMessage(f"entry {entry_id} of {stream} has no readable body")
                    await self.handler(delivery)
                except JobCancelled:
                    outcome = "cancelled"
                    await self._ack(delivery)
                except PermanentError as exc:
                    outcome = "dead"
                    span.record_exception(exc)
                    span.set_status(trace.StatusCode.ERROR, str(exc))
                    await self._dead_letter(delivery, exc)
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(trace.StatusCode.ERROR, str(exc))
                    if delivery.attempt >= self.policy.max_tries:
                        outcome = "dead"
                        await self._dead_letter(delivery, exc)
                    else:
                        outcome = "retried"
                        retry_after = exc.retry_after_s if isinstance(exc, TransientError) else None
                        await self._retry_later(delivery, frame, retry_after, exc)
                else:
                    outcome = "completed"
                    self.stats.processed += 1
                    await self._ack(delivery)
            finally:
                span.set_attribute("downlink.outcome", outcome)
                metrics.observe_task(self.group, outcome, time.monotonic() - began)

    # --- outcomes -----------------------------------------------------------------------------

    async def _ack(self, delivery: Delivery) -> None:
        # Shielded: a shutdown arriving now must not leave done work unacknowledged.
        await asyncio.shield(self.redis.xack(delivery.stream, self.group, delivery.entry_id))

    async def _retry_later(
        self,
        delivery: Delivery,
        frame: bytes,
        retry_after_s: float | None,
        error: BaseException,
    ) -> None:
        delay_s = self.policy.backoff_s(delivery.attempt, retry_after_s)
        headers = {**delivery.headers, ATTEMPT_HEADER: str(delivery.attempt)}
        new_frame = await BinaryMessageFormatV1.encode(
            message=delivery.body,
            reply_to=None,
            headers=headers,
            correlation_id=str(headers.get("correlation_id", delivery.entry_id)),
        )
        member = delivery.stream.encode() + b"\n" + new_frame
        log.info(
            "retrying %s entry %s in %.1fs (attempt %d of %d)",
            delivery.stream,
            delivery.entry_id,
            delay_s,
            delivery.attempt,
            self.policy.max_tries,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(DELAYED_KEY, {member: time.time() + delay_s})
            pipe.xack(delivery.stream, self.group, delivery.entry_id)
            await asyncio.shield(pipe.execute())
        self.stats.retried += 1
        metrics.RETRIES.labels(self.group, delivery.stream).inc()
        if self.on_retry is not None:
            try:
                await self.on_retry(delivery, error, delay_s)
            except Exception:
                # The retry is scheduled already; a hook that fails only loses its report.
                log.exception(
                    "retry hook failed for %s entry %s", delivery.stream, delivery.entry_id
                )

    async def _dead_letter(self, delivery: Delivery, error: BaseException) -> None:
        log.warning(
            "dead-lettering %s entry %s after %d tries: %s",
            delivery.stream,
            delivery.entry_id,
            delivery.attempt,
            error,
        )
        if self.on_dead is not None:
            try:
                await self.on_dead(delivery, error)
            except PermanentError as hook_error:
                # A poison body cannot be described by its service; the dead letter still is.
                log.warning("dead-letter hook refused %s: %s", delivery.entry_id, hook_error)
        letter = DeadLetter(
            stream=delivery.stream,
            group=self.group,
            entry_id=delivery.entry_id,
            error=f"{type(error).__name__}: {error}",
            attempts=delivery.attempt,
            consumer=self.consumer,
            failed_at=time.time(),
            body=delivery.body.decode("utf-8", "replace"),
            headers={str(k): str(v) for k, v in delivery.headers.items()},
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(DEAD_STREAM, {b"letter": msgspec.json.encode(letter)})
            pipe.xack(delivery.stream, self.group, delivery.entry_id)
            await asyncio.shield(pipe.execute())
        self.stats.failed += 1
        self.stats.dead += 1
        metrics.DEAD_LETTERED.labels(self.group, delivery.stream).inc()

    # --- background loops ---------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        await self._reclaimer.renew(self._in_flight.values())

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

    async def _move_due_retries(self) -> None:
        await self.redis.eval(_MOVE_DUE, 1, DELAYED_KEY, time.time())

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


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An entry that ran out of tries or failed permanently, as stored on `downlink:dead`."""

    stream: str
    group: str
    entry_id: str
    error: str
    attempts: int
    consumer: str
    failed_at: float
    body: str
    headers: dict[str, str] = {}


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


def _int_header(headers: dict[str, Any], name: str) -> int:
    try:
        return int(headers.get(name, 0))
    except (TypeError, ValueError):
        return 0
