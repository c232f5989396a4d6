"""run_worker on real Redis: a user-defined task as a spec, signals, hooks, and loud crashes.

The spec here is what a user's own task looks like (a "resize" command on a stream of its own);
the last test crashes the real downloader's cancel watcher in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis import Redis as SyncRedis

from shared.broker import create_broker
from shared.consumer import ConsumerPolicy, DeadLetter
from shared.errors import PermanentError, TransientError
from shared.redis_client import open_redis
from shared.runner import (
    BackgroundLoopCrashed,
    Listener,
    WorkerSpec,
    cancel_until_done,
    run_worker,
)
from shared.settings import Settings
from shared.streams import CANCEL_CHANNEL, DEAD_STREAM
from shared.workers import list_workers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from redis.asyncio import Redis

    from shared.consumer import Delivery
    from shared.runner import WorkerContext
    from tests.support.services import ServiceLauncher

STREAM = "tasks:resize"
GROUP = "resizer"


class Resize(msgspec.Struct, frozen=True, kw_only=True):
    """The user's own command."""

    image: str
    width: int


@dataclass
class Thumbnails:
    """The user's own resources: what was opened, done, and reported through the hooks."""

    worker: str = ""
    open: bool = False
    closed: bool = False
    done: list[str] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)
    retried: list[tuple[str, int, float]] = field(default_factory=list)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout_s}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url) as client:
        yield client


@pytest.fixture
async def send(redis_url: str) -> AsyncIterator[Callable[[Any], Awaitable[None]]]:
    """Publish a body to STREAM the way the services do (a FastStream frame)."""
    broker = create_broker(redis_url)
    await broker.connect()

    async def publish(body: Any) -> None:
        await broker.publish(body, stream=STREAM)

    try:
        yield publish
    finally:
        await broker.stop()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(spans: InMemorySpanExporter) -> TracerProvider:
    # The test's own provider: run_worker then installs nothing process-wide.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


@pytest.fixture
async def start(
    redis_url: str, tracer_provider: TracerProvider
) -> AsyncIterator[Callable[[WorkerSpec[Resize, Thumbnails]], asyncio.Task[None]]]:
    """Run a spec as a task; whatever a test leaves running is cancelled after it."""
    tasks: list[asyncio.Task[None]] = []

    def run(spec: WorkerSpec[Resize, Thumbnails]) -> asyncio.Task[None]:
        settings = Settings(redis_url=redis_url)
        tasks.append(
            asyncio.create_task(run_worker(settings, spec, tracer_provider=tracer_provider))
        )
        return tasks[-1]

    yield run
    # Cancelled until they end: a library's wait_for on Python 3.11 can swallow one cancel.
    await cancel_until_done(tasks)
    await asyncio.gather(*tasks, return_exceptions=True)


def resize_spec(
    thumbs: Thumbnails,
    handler: Callable[[Resize, Thumbnails, Delivery], Awaitable[None]],
    **fields: Any,
) -> WorkerSpec[Resize, Thumbnails]:
    @contextlib.asynccontextmanager
    async def resources(context: WorkerContext) -> AsyncIterator[Thumbnails]:
        thumbs.worker, thumbs.open = context.worker, True
        try:
            yield thumbs
        finally:
            thumbs.closed = True

    async def on_dead(command: Resize, t: Thumbnails, _: Delivery, error: BaseException) -> None:
        t.dead.append((command.image, str(error)))

    async def on_retry(
        command: Resize, t: Thumbnails, delivery: Delivery, _: BaseException, delay_s: float
    ) -> None:
        t.retried.append((command.image, delivery.attempt, delay_s))

    policy = ConsumerPolicy(concurrency=2, max_tries=2, retry_backoff_s=0.1, shutdown_grace_s=5.0)
    spec_fields: dict[str, Any] = {"on_dead": on_dead, "on_retry": on_retry, **fields}
    return WorkerSpec(
        name="resizer",
        streams=(STREAM,),
        group=GROUP,
        decoder=msgspec.json.Decoder(Resize),
        resources=resources,
        handler=handler,
        policy=policy,
        **spec_fields,
    )


async def done_resizing(command: Resize, thumbs: Thumbnails, _: Delivery) -> None:
    thumbs.done.append(command.image)


async def pending(redis: Redis) -> int:
    return int((await redis.xpending(STREAM, GROUP))["pending"])


async def test_a_spec_runs_its_handler_on_its_resources_until_sigterm(
    redis: Redis,
    send: Callable[[Any], Awaitable[None]],
    start: Callable[[WorkerSpec[Resize, Thumbnails]], asyncio.Task[None]],
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    thumbs = Thumbnails()
    worker = start(resize_spec(thumbs, done_resizing))
    await send(Resize(image="a.tif", width=256))
    await send(Resize(image="b.tif", width=512))

    async def both_done() -> bool:
        return sorted(thumbs.done) == ["a.tif", "b.tif"] and await pending(redis) == 0

    await eventually(both_done, 5, "both resized and acknowledged")
    [registered] = await list_workers(redis)
    assert (registered.service, registered.consumer) == ("resizer", thumbs.worker)
    assert any(f"resizer {thumbs.worker} reading {STREAM}" in r.message for r in caplog.records)

    signal.raise_signal(signal.SIGTERM)
    await asyncio.wait_for(worker, 10)

    assert thumbs.open
    assert thumbs.closed
    assert await list_workers(redis) == []
    assert any(f"resizer {thumbs.worker} stopped" in r.message for r in caplog.records)
    assert [s.name for s in spans.get_finished_spans()].count(f"{STREAM} process") == 2
    # The handlers are gone with the worker: SIGTERM is the process's again.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_hooks_get_the_decoded_command_and_a_poison_body_is_dead_lettered(
    redis: Redis,
    send: Callable[[Any], Awaitable[None]],
    start: Callable[[WorkerSpec[Resize, Thumbnails]], asyncio.Task[None]],
) -> None:
    async def handler(command: Resize, thumbs: Thumbnails, _: Delivery) -> None:
        if command.width <= 0:
            raise PermanentError(f"width {command.width} is not a size")
        if command.image == "flaky.tif":
            raise TransientError("storage timed out")
        thumbs.done.append(command.image)

    thumbs = Thumbnails()
    worker = start(resize_spec(thumbs, handler))
    await send(Resize(image="zero.tif", width=0))
    await send(Resize(image="flaky.tif", width=64))
    await send(b'{"image": 7}')

    async def settled() -> bool:
        return await redis.xlen(DEAD_STREAM) == 3 and await pending(redis) == 0

    await eventually(settled, 10, "three dead letters")
    await cancel_until_done([worker])
    with contextlib.suppress(asyncio.CancelledError):
        await worker

    letters = [
        msgspec.json.decode(fields[b"letter"], type=DeadLetter)
        for _id, fields in await redis.xrange(DEAD_STREAM)
    ]
    assert sorted(letter.error.split(":")[0] for letter in letters) == [
        "PermanentError",
        "PoisonMessage",
        "TransientError",
    ]
    poison = next(letter for letter in letters if letter.error.startswith("PoisonMessage"))
    assert "undecodable resizer command" in poison.error
    # The poison body never reached a hook: there was no command to give it.
    assert sorted(thumbs.dead) == [
        ("flaky.tif", "storage timed out"),
        ("zero.tif", "width 0 is not a size"),
    ]
    [(image, attempt, delay_s)] = thumbs.retried
    assert (image, attempt) == ("flaky.tif", 1)
    assert 0.05 < delay_s < 0.2
    assert thumbs.closed


async def test_a_crashing_listener_stops_the_worker_loudly_after_the_work_in_flight(
    redis: Redis,
    send: Callable[[Any], Awaitable[None]],
    start: Callable[[WorkerSpec[Resize, Thumbnails]], asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()

    async def slow(command: Resize, thumbs: Thumbnails, _: Delivery) -> None:
        started.set()
        await asyncio.sleep(0.5)
        thumbs.done.append(command.image)

    async def watch(_: Thumbnails) -> None:
        await started.wait()
        raise RuntimeError("the watched channel went away")

    thumbs = Thumbnails()
    spec = resize_spec(thumbs, slow, listeners=(Listener("watcher", watch),))
    worker = start(spec)
    await send(Resize(image="a.tif", width=256))

    with pytest.raises(BackgroundLoopCrashed, match="listener 'watcher' crashed"):
        await asyncio.wait_for(worker, 10)

    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "listener 'watcher' crashed: stopping the worker"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    # Stopped as on SIGTERM: the file in flight was finished and acknowledged, then all closed.
    assert thumbs.done == ["a.tif"]
    assert await pending(redis) == 0
    assert thumbs.closed
    assert await list_workers(redis) == []


def test_a_crashed_cancel_watcher_stops_the_downloader_with_a_failure_status(
    redis_url: str, tmp_path: Path, service_launcher: ServiceLauncher
) -> None:
    downloader = service_launcher.start(
        "downloader",
        env={"DOWNLINK_REDIS_URL": redis_url, "DOWNLINK_STORAGE_URL": f"file://{tmp_path}/data"},
    )
    downloader.wait_for_log(r"downloader \S+ reading", timeout=20)
    # A cancel whose job id is not UTF-8: the watcher's decode raises, which used to end the
    # watcher silently and leave the downloader deaf to every cancel after.
    deadline = time.monotonic() + 10
    with SyncRedis.from_url(redis_url) as client:
        while downloader.running:
            client.publish(CANCEL_CHANNEL, b"\xff")
            if time.monotonic() > deadline:
                pytest.fail(f"the downloader is still running:\n{downloader.log_tail(20)}")
            time.sleep(0.2)

    assert downloader.wait(timeout=10) == 1
    log = downloader.log_text()
    assert "listener 'cancel watcher' crashed: stopping the worker" in log
    assert "UnicodeDecodeError" in log
    assert "stopped" in log
