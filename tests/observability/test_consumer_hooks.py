"""What StreamConsumer reports: the retry hook, its metrics, and its span (links, outcome)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from shared import metrics
from shared.broker import BrokerPublisher, create_broker
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.errors import PermanentError, TransientError
from shared.events import DownloadFile
from shared.ids import FileId, JobId, UserId
from shared.redis_client import open_redis
from shared.telemetry import LINKS_HEADER, link_header

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from redis.asyncio import Redis

STREAM = "obs:lane"
GROUP = "obs-group"


def _command(n: int) -> DownloadFile:
    return DownloadFile(
        job_id=JobId("job-1"),
        file_id=FileId(f"file-{n}"),
        user_id=UserId("user-1"),
        url=f"http://127.0.0.1:9/{n}",
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url) as client:
        yield client


@pytest.fixture
async def broker(
    redis_url: str, redis: Redis, tracer_provider: TracerProvider
) -> AsyncIterator[BrokerPublisher]:
    broker = create_broker(redis_url, tracer_provider)
    await broker.connect()
    try:
        yield BrokerPublisher(broker, redis, tracer_provider)
    finally:
        await broker.stop()


async def _run_until(
    consumer: StreamConsumer, done: Callable[[], bool], timeout_s: float = 5.0
) -> None:
    task = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            assert time.monotonic() < deadline, "consumer did not get there in time"
            await asyncio.sleep(0.02)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 5)


def _consumer(
    redis: Redis,
    handler: Callable[[Delivery], Awaitable[None]],
    tracer_provider: TracerProvider | None = None,
    **hooks: object,
) -> StreamConsumer:
    return StreamConsumer(
        redis=redis,
        streams=[STREAM],
        group=GROUP,
        consumer="c-1",
        handler=handler,
        policy=ConsumerPolicy(max_tries=3, retry_backoff_s=0.05, claim_idle_s=30),
        tracer_provider=tracer_provider,
        **hooks,  # type: ignore[arg-type]
    )


def _count(counter: object, *labels: str) -> float:
    value: float = counter.labels(*labels)._value.get()  # type: ignore[attr-defined]
    return value


async def test_the_retry_hook_hears_each_scheduled_retry(
    redis: Redis, broker: BrokerPublisher
) -> None:
    tries: list[int] = []
    retried: list[tuple[int, str, float]] = []

    async def handler(delivery: Delivery) -> None:
        tries.append(delivery.attempt)
        if delivery.attempt < 3:
            raise TransientError(f"try {delivery.attempt} failed")

    async def on_retry(delivery: Delivery, error: BaseException, delay_s: float) -> None:
        retried.append((delivery.attempt, str(error), delay_s))

    before = _count(metrics.RETRIES, GROUP, STREAM)
    await broker.send(_command(1), STREAM)
    await _run_until(_consumer(redis, handler, on_retry=on_retry), lambda: tries[-1:] == [3])
    assert [(attempt, error) for attempt, error, _ in retried] == [
        (1, "try 1 failed"),
        (2, "try 2 failed"),
    ]
    assert all(0 < delay < 1 for _, _, delay in retried)
    assert _count(metrics.RETRIES, GROUP, STREAM) == before + 2
    assert _count(metrics.TASKS, GROUP, "completed") >= 1


async def test_a_failing_retry_hook_does_not_lose_the_retry(
    redis: Redis, broker: BrokerPublisher
) -> None:
    tries: list[int] = []

    async def handler(delivery: Delivery) -> None:
        tries.append(delivery.attempt)
        if delivery.attempt == 1:
            raise TransientError("flaky")

    async def on_retry(delivery: Delivery, error: BaseException, delay_s: float) -> None:
        raise RuntimeError("the hook broke")

    await broker.send(_command(2), STREAM)
    await _run_until(_consumer(redis, handler, on_retry=on_retry), lambda: tries == [1, 2])


async def test_dead_letters_and_in_flight_are_counted(
    redis: Redis, broker: BrokerPublisher
) -> None:
    seen: list[float] = []
    dead_before = _count(metrics.DEAD_LETTERED, GROUP, STREAM)
    tasks_before = _count(metrics.TASKS, GROUP, "dead")

    async def handler(delivery: Delivery) -> None:
        seen.append(metrics.IN_FLIGHT.labels(GROUP)._value.get())
        raise PermanentError("404")

    consumer = _consumer(redis, handler)
    await broker.send(_command(3), STREAM)
    await _run_until(consumer, lambda: consumer.stats.dead == 1)
    assert seen == [1]
    assert metrics.IN_FLIGHT.labels(GROUP)._value.get() == 0
    assert _count(metrics.DEAD_LETTERED, GROUP, STREAM) == dead_before + 1
    assert _count(metrics.TASKS, GROUP, "dead") == tasks_before + 1


async def test_the_consumer_span_links_to_a_fan_in_messages_inputs(
    redis: Redis,
    broker: BrokerPublisher,
    tracer_provider: TracerProvider,
    spans: InMemorySpanExporter,
) -> None:
    tracer = tracer_provider.get_tracer("test")
    inputs = []
    for name in ("band-red", "band-nir"):
        with tracer.start_as_current_span(name) as span:
            inputs.append(span.get_span_context())
    with tracer.start_as_current_span("fan-in") as parent:
        await broker._broker.publish(_command(4), stream=STREAM, headers=link_header(inputs))  # type: ignore[attr-defined]
    handled: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(delivery)

    await _run_until(_consumer(redis, handler, tracer_provider), lambda: bool(handled))
    assert LINKS_HEADER in handled[0].headers
    [consumed] = [s for s in spans.get_finished_spans() if s.name == f"{STREAM} process"]
    assert consumed.context.trace_id == parent.get_span_context().trace_id
    assert [(link.context.span_id) for link in consumed.links] == [c.span_id for c in inputs]
    assert consumed.attributes is not None
    assert consumed.attributes["downlink.outcome"] == "completed"
    assert consumed.attributes["messaging.consumer.name"] == "c-1"
