"""The one worker runner: a service describes itself as a WorkerSpec, `run_worker` runs it.

A spec is plain data (streams, group, decoder, handler, policy, hooks, listeners), so the
built-in services and user-defined tasks run on the same machinery. The runner owns what every
worker process does around its handler: Redis, the broker, the tracer, SIGTERM/SIGINT, the
registry heartbeat and /metrics, and one TaskGroup for the loops beside the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import msgspec
from redis.exceptions import RedisError

from shared.broker import BrokerPublisher, create_broker
from shared.consumer import StreamConsumer
from shared.errors import PoisonMessage
from shared.redis_client import open_redis
from shared.streams import consumer_name
from shared.telemetry import create_tracer_provider
from shared.trim import trim_stream
from shared.workers import worker_telemetry

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from opentelemetry.sdk.trace import TracerProvider
    from redis.asyncio import Redis

    from shared.consumer import ConsumerPolicy, Delivery
    from shared.settings import Settings

log = logging.getLogger(__name__)

C = TypeVar("C")  # the command a stream entry decodes to
D = TypeVar("D")  # what the service's resources factory opened
C_co = TypeVar("C_co", covariant=True)

# How often a worker trims the streams it keeps bounded.
TRIM_INTERVAL_S = 60.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class BackgroundLoopCrashed(Exception):
    """A listener or trimmer of a worker raised; the worker stopped (gracefully) because of it."""


class Decoder(Protocol[C_co]):
    """Bytes to a command: a `msgspec.json.Decoder` (or msgpack) of the stream's type."""

    def decode(self, buf: bytes, /) -> C_co: ...


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What the runner opened, for a service's resources factory.

    Attributes:
        settings: the effective settings.
        redis: the process's Redis client.
        publisher: events to `downlink:events`, commands to their lanes.
        tracer_provider: the worker's provider (also the process's global one).
        worker: this process's consumer name (host-pid).
    """

    settings: Settings
    redis: Redis
    publisher: BrokerPublisher
    tracer_provider: TracerProvider
    worker: str


@dataclass(frozen=True, slots=True)
class Listener(Generic[D]):
    """A loop run beside the consumer for the worker's life (a pub/sub watcher, say).

    It should run until cancelled: if it raises, the worker stops and says which one it was.
    """

    name: str
    run: Callable[[D], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec(Generic[C, D]):
    """One kind of worker as data: what it reads, how it handles it, what it opens.

    Attributes:
        name: the service name (logs, tracer, worker registry, poison-message text).
        streams: the streams it consumes, highest priority first.
        group: its consumer group.
        decoder: turns an entry's body into the handler's command; failing, a PoisonMessage.
        resources: opens what the handler needs, for the worker's life.
        handler: runs one command; its outcome (return, domain error) decides ack/retry/dead.
        policy: concurrency, tries, backoff, idle threshold, shutdown grace.
        on_dead: called before an entry is dead-lettered (announce the failure, clean up).
        on_retry: called once a failed try is scheduled again, with the delay in seconds.
        listeners: loops beside the consumer; a crash stops the worker.
        trimmed_streams: streams this worker keeps bounded (never past a pending entry).
        metrics_port: where to serve /metrics (DOWNLINK_METRICS_PORT); None serves nothing.
        details: extra fields for the start log line (pool pids, say).
    """

    name: str
    streams: tuple[str, ...]
    group: str
    decoder: Decoder[C]
    resources: Callable[[WorkerContext], AbstractAsyncContextManager[D]]
    handler: Callable[[C, D, Delivery], Awaitable[object]]
    policy: ConsumerPolicy
    on_dead: Callable[[C, D, Delivery, BaseException], Awaitable[None]] | None = None
    on_retry: Callable[[C, D, Delivery, BaseException, float], Awaitable[None]] | None = None
    listeners: tuple[Listener[D], ...] = ()
    trimmed_streams: tuple[str, ...] = ()
    metrics_port: int | None = None
    details: Callable[[D], Mapping[str, Any]] | None = None


async def run_worker(
    settings: Settings, spec: WorkerSpec[C, D], *, tracer_provider: TracerProvider | None = None
) -> None:
    """Run `spec` until SIGTERM/SIGINT, then give in-flight work the shutdown grace.

    Without `tracer_provider` the worker makes its own, installs it as the process's global
    one (handlers' module-level tracers record into it) and shuts it down at the end.

    Raises:
        BackgroundLoopCrashed: a listener or trimmer raised; logged, then the worker stopped.
    """
    provider = tracer_provider or create_tracer_provider(spec.name)
    stop = asyncio.Event()
    try:
        # Installed first, so a signal during start-up (a pool spawning) stops it cleanly too.
        with _stop_on_signals(stop.set):
            async with _opened(settings, spec, provider) as (context, deps):
                await _consume(settings, spec, context, deps, stop)
    finally:
        if tracer_provider is None:
            provider.shutdown()


@contextlib.asynccontextmanager
async def _opened(
    settings: Settings, spec: WorkerSpec[C, D], tracer_provider: TracerProvider
) -> AsyncIterator[tuple[WorkerContext, D]]:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_redis(settings.redis_url))
        broker = create_broker(settings.redis_url, tracer_provider)
        await broker.connect()
        stack.push_async_callback(broker.stop)
        context = WorkerContext(
            settings,
            redis,
            BrokerPublisher(broker, redis, tracer_provider),
            tracer_provider,
            consumer_name(),
        )
        yield context, await stack.enter_async_context(spec.resources(context))


async def _consume(
    settings: Settings,
    spec: WorkerSpec[C, D],
    context: WorkerContext,
    deps: D,
    stop: asyncio.Event,
) -> None:
    bound = _Bound(spec, deps)
    consumer = StreamConsumer(
        redis=context.redis,
        streams=spec.streams,
        group=spec.group,
        consumer=context.worker,
        handler=bound.handle,
        on_dead=bound.on_dead,
        on_retry=bound.on_retry,
        policy=spec.policy,
        tracer_provider=context.tracer_provider,
    )
    loops: dict[str, Callable[[], Awaitable[None]]] = {
        f"listener {listener.name!r}": _bind(listener, deps) for listener in spec.listeners
    }
    if spec.trimmed_streams:
        loops["trimmer"] = lambda: _trim_forever(context.redis, spec.trimmed_streams)
    async with worker_telemetry(
        context.redis, spec.name, consumer, metrics_port=spec.metrics_port, host=settings.http_host
    ):
        details = spec.details(deps) if spec.details is not None else {}
        log.info(
            "%s %s reading %s",
            spec.name,
            context.worker,
            ", ".join(spec.streams),
            extra={"settings": settings.describe(), **details},
        )
        crashed = await _supervise(consumer, loops, stop)
        log.info("%s %s stopped", spec.name, context.worker)
    if crashed:
        raise BackgroundLoopCrashed(f"{spec.name} {context.worker}: {', '.join(crashed)} crashed")


async def _supervise(
    consumer: StreamConsumer,
    loops: Mapping[str, Callable[[], Awaitable[None]]],
    stop: asyncio.Event,
) -> list[str]:
    """Run the consumer with `loops` beside it in one TaskGroup; returns the loops that crashed.

    A crash is logged with the loop's name and stops the consumer as SIGTERM does, so the
    work in flight still gets its grace; the caller then fails the worker.
    """
    crashed: list[str] = []

    async def guarded(name: str, run: Callable[[], Awaitable[None]]) -> None:
        try:
            await run()
        except Exception:
            crashed.append(name)
            log.exception("%s crashed: stopping the worker", name)
            consumer.stop()

    async def stop_on_request() -> None:
        await stop.wait()
        consumer.stop()

    try:
        async with asyncio.TaskGroup() as group:
            beside = [group.create_task(guarded(n, run), name=n) for n, run in loops.items()]
            beside.append(group.create_task(stop_on_request(), name="stop on signal"))
            try:
                await consumer.run()
            finally:
                await cancel_until_done(beside)
    except ExceptionGroup as failure:
        # The loops beside are guarded, so this is the consumer's own error: raise it as is.
        raise failure.exceptions[0] from None
    return crashed


async def cancel_until_done(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until every one has ended."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        # Again every second: a library may swallow a cancel (asyncio.wait_for on 3.11 can).
        _done, pending = await asyncio.wait(pending, timeout=1.0)


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stop)
    try:
        yield
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)


async def _trim_forever(redis: Redis, streams: tuple[str, ...]) -> None:
    """Drop entries every group has acknowledged, never one still pending (shared.trim)."""
    while True:
        await asyncio.sleep(TRIM_INTERVAL_S)
        for stream in streams:
            try:
                await trim_stream(redis, stream)
            except (RedisError, OSError) as exc:
                log.warning("trimming %s failed: %s", stream, exc)


def _bind(listener: Listener[D], deps: D) -> Callable[[], Awaitable[None]]:
    return lambda: listener.run(deps)


@dataclass(frozen=True, slots=True)
class _Bound(Generic[C, D]):
    """The spec's typed handler and hooks as the consumer's Delivery callbacks."""

    spec: WorkerSpec[C, D]
    deps: D

    def decode(self, delivery: Delivery) -> C:
        try:
            return self.spec.decoder.decode(delivery.body)
        except msgspec.DecodeError as exc:
            raise PoisonMessage(
                f"undecodable {self.spec.name} command {delivery.entry_id}: {exc}"
            ) from None

    async def handle(self, delivery: Delivery) -> None:
        await self.spec.handler(self.decode(delivery), self.deps, delivery)

    async def on_dead(self, delivery: Delivery, error: BaseException) -> None:
        # Decoding first: a poison body raises PoisonMessage, which the consumer logs as the
        # hook refusing, and dead-letters the entry all the same.
        if self.spec.on_dead is not None:
            await self.spec.on_dead(self.decode(delivery), self.deps, delivery, error)

    async def on_retry(self, delivery: Delivery, error: BaseException, delay_s: float) -> None:
        if self.spec.on_retry is not None:
            await self.spec.on_retry(self.decode(delivery), self.deps, delivery, error, delay_s)
