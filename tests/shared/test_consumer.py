"""StreamConsumer on real Redis: priority, ack, retries, dead letters, reclaim, leases, stop."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from shared.broker import BrokerPublisher, create_broker
from shared.consumer import ConsumerPolicy, DeadLetter, Delivery, StreamConsumer, ensure_groups
from shared.errors import JobCancelled, PermanentError, PoisonMessage, TransientError
from shared.events import DOWNLOAD_DECODER, DownloadFile
from shared.ids import FileId, JobId, UserId
from shared.redis_client import open_redis
from shared.streams import DEAD_STREAM, DOWNLOAD_LANES, Lane, download_stream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis

GROUP = "downloader-under-test"
HIGH, NORMAL, LOW = (download_stream(lane) for lane in Lane)


def command(n: int, priority: int = 5) -> DownloadFile:
    return DownloadFile(
        job_id=JobId("job-1"),
        file_id=FileId(f"file-{n}"),
        user_id=UserId("user-1"),
        url=f"http://127.0.0.1:9/{n}",
        priority=priority,
    )


def file_id_of(delivery: Delivery) -> str:
    try:
        return DOWNLOAD_DECODER.decode(delivery.body).file_id
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"undecodable entry {delivery.entry_id}") from exc


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float, message: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{message} not reached within {timeout_s}s")
        await asyncio.sleep(0.02)


async def pending_count(redis: Redis, stream: str, group: str = GROUP) -> int:
    summary = await redis.xpending(stream, group)
    return int(summary["pending"])


async def dead_letters(redis: Redis) -> list[DeadLetter]:
    return [
        msgspec.json.decode(fields[b"letter"], type=DeadLetter)
        for _id, fields in await redis.xrange(DEAD_STREAM)
    ]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url) as client:
        yield client


@pytest.fixture
async def publisher(redis_url: str, redis: Redis) -> AsyncIterator[BrokerPublisher]:
    broker = create_broker(redis_url)
    await broker.connect()
    try:
        yield BrokerPublisher(broker, redis)
    finally:
        await broker.stop()


class Running:
    """A started consumer and the task running it."""

    def __init__(self, consumer: StreamConsumer, task: asyncio.Task[None]) -> None:
        self.consumer = consumer
        self.task = task

    async def stop(self, timeout_s: float = 5.0) -> float:
        """Stop the consumer and wait for `run()` to return; the seconds that took."""
        began = time.monotonic()
        self.consumer.stop()
        await asyncio.wait_for(asyncio.shield(self.task), timeout_s)
        return time.monotonic() - began


@pytest.fixture
async def start_consumer(redis: Redis) -> AsyncIterator[Callable[..., Running]]:
    """Start StreamConsumers on the download lanes; every one is stopped after the test."""
    started: list[Running] = []

    def start(
        handler: Callable[[Delivery], Awaitable[None]],
        *,
        name: str = "consumer-1",
        on_dead: Callable[[Delivery, BaseException], Awaitable[None]] | None = None,
        **policy: Any,
    ) -> Running:
        settings = {
            "concurrency": 1,
            "max_tries": 3,
            "retry_backoff_s": 0.05,
            "claim_idle_s": 30.0,
            "lease_renew_s": 5.0,
            "shutdown_grace_s": 5.0,
        } | policy
        consumer = StreamConsumer(
            redis=redis,
            streams=DOWNLOAD_LANES,
            group=GROUP,
            consumer=name,
            handler=handler,
            policy=ConsumerPolicy(**settings),
            on_dead=on_dead,
        )
        running = Running(consumer, asyncio.create_task(consumer.run()))
        started.append(running)
        return running

    yield start
    for running in started:
        running.consumer.stop()
    results = await asyncio.wait_for(
        asyncio.gather(*(r.task for r in started), return_exceptions=True), 10
    )
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


def test_download_lanes_are_read_highest_first() -> None:
    assert DOWNLOAD_LANES == (HIGH, NORMAL, LOW)


async def test_high_lane_entries_are_handled_before_low_ones(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    await ensure_groups(redis, {GROUP: DOWNLOAD_LANES})
    for n in range(3):
        await publisher.send(command(n, priority=1), LOW)
    for n in range(3, 6):
        await publisher.send(command(n, priority=9), HIGH)
    await publisher.send(command(6, priority=5), NORMAL)
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(file_id_of(delivery))

    start_consumer(handler, concurrency=1)

    async def all_handled() -> bool:
        return len(handled) == 7

    await eventually(all_handled, 4, "seven entries handled")
    assert handled == [f"file-{n}" for n in (3, 4, 5, 6, 0, 1, 2)]


async def test_entries_published_before_the_consumer_started_are_not_skipped(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    # No group exists yet: the consumer must create it at id 0, not at `$`.
    await publisher.send(command(1), NORMAL)
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(file_id_of(delivery))

    start_consumer(handler)

    async def seen() -> bool:
        return handled == ["file-1"]

    await eventually(seen, 3, "the early entry handled")


async def test_a_successful_handler_is_acknowledged(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    deliveries: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        deliveries.append(delivery)

    running = start_consumer(handler)
    await publisher.send(command(1, priority=9), HIGH)

    async def acked() -> bool:
        return bool(deliveries) and await pending_count(redis, HIGH) == 0

    await eventually(acked, 3, "handled and acknowledged")
    [delivery] = deliveries
    assert delivery.stream == HIGH
    assert delivery.attempt == 1
    assert DOWNLOAD_DECODER.decode(delivery.body) == command(1, priority=9)
    assert running.consumer.stats.processed == 1
    assert await redis.xlen(DEAD_STREAM) == 0


async def test_a_permanent_error_dead_letters_at_once(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    attempts: list[int] = []
    hooked: list[tuple[Delivery, BaseException]] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise PermanentError("HTTP 404 from somewhere")

    async def on_dead(delivery: Delivery, error: BaseException) -> None:
        hooked.append((delivery, error))

    start_consumer(handler, on_dead=on_dead, max_tries=3)
    await publisher.send(command(1), NORMAL)

    async def dead() -> bool:
        return await redis.xlen(DEAD_STREAM) == 1

    await eventually(dead, 3, "a dead letter")
    [letter] = await dead_letters(redis)
    assert letter.stream == NORMAL
    assert letter.group == GROUP
    assert letter.attempts == 1
    assert "PermanentError" in letter.error
    assert "HTTP 404 from somewhere" in letter.error
    assert DOWNLOAD_DECODER.decode(letter.body.encode()) == command(1)
    assert await pending_count(redis, NORMAL) == 0
    assert attempts == [1]
    [(delivery, error)] = hooked
    assert isinstance(error, PermanentError)
    assert delivery.entry_id == letter.entry_id
    await asyncio.sleep(0.6)  # a retry would have been moved back by now
    assert attempts == [1]


@pytest.mark.parametrize(
    "error",
    [TransientError("connection reset"), RuntimeError("connection reset")],
    ids=["transient", "unexpected"],
)
async def test_a_transient_error_is_retried_then_dead_lettered(
    redis: Redis,
    publisher: BrokerPublisher,
    start_consumer: Callable[..., Running],
    error: Exception,
) -> None:
    attempts: list[int] = []
    hooked: list[int] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise error

    async def on_dead(delivery: Delivery, error: BaseException) -> None:
        hooked.append(delivery.attempt)

    running = start_consumer(handler, on_dead=on_dead, max_tries=3, retry_backoff_s=0.05)
    await publisher.send(command(1), LOW)

    async def dead() -> bool:
        return await redis.xlen(DEAD_STREAM) == 1

    await eventually(dead, 4.5, "a dead letter after three tries")
    assert attempts == [1, 2, 3]
    [letter] = await dead_letters(redis)
    assert letter.attempts == 3
    assert letter.stream == LOW
    assert f"{type(error).__name__}: connection reset" in letter.error
    assert DOWNLOAD_DECODER.decode(letter.body.encode()) == command(1)
    assert hooked == [3]
    assert await pending_count(redis, LOW) == 0
    assert running.consumer.stats.retried == 2
    assert running.consumer.stats.dead == 1


async def test_a_retry_waits_for_the_servers_retry_after(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    tries: list[float] = []

    async def handler(delivery: Delivery) -> None:
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise TransientError("HTTP 503", retry_after_s=1.5)

    start_consumer(handler, retry_backoff_s=0.01)
    await publisher.send(command(1), NORMAL)

    async def retried() -> bool:
        return len(tries) == 2

    await eventually(retried, 4, "the retry")
    assert tries[1] - tries[0] >= 1.5


async def test_a_cancelled_job_is_acknowledged_without_a_dead_letter(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    attempts: list[int] = []
    hooked: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise JobCancelled("job-1 was cancelled")

    async def on_dead(delivery: Delivery, error: BaseException) -> None:
        hooked.append(delivery)

    start_consumer(handler, on_dead=on_dead)
    await publisher.send(command(1), NORMAL)

    async def acked() -> bool:
        return bool(attempts) and await pending_count(redis, NORMAL) == 0

    await eventually(acked, 3, "the cancelled entry acknowledged")
    await asyncio.sleep(0.6)
    assert attempts == [1]
    assert hooked == []
    assert await redis.xlen(DEAD_STREAM) == 0


@pytest.mark.parametrize(
    ("fields", "handler_calls"),
    [({b"__data__": b"garbage"}, 1), ({b"something": b"else"}, 0)],
    ids=["garbage-body", "no-data-field"],
)
async def test_a_poison_entry_is_dead_lettered_once(
    redis: Redis,
    start_consumer: Callable[..., Running],
    fields: dict[bytes, bytes],
    handler_calls: int,
) -> None:
    calls: list[Delivery] = []
    hooked: list[BaseException] = []

    async def handler(delivery: Delivery) -> None:
        calls.append(delivery)
        file_id_of(delivery)

    async def on_dead(delivery: Delivery, error: BaseException) -> None:
        hooked.append(error)
        file_id_of(delivery)  # the service's hook cannot describe it either

    await ensure_groups(redis, {GROUP: DOWNLOAD_LANES})
    entry_id = (await redis.xadd(NORMAL, fields)).decode()
    start_consumer(handler, on_dead=on_dead, claim_idle_s=0.3, lease_renew_s=0.1)

    async def dead() -> bool:
        return await redis.xlen(DEAD_STREAM) >= 1

    await eventually(dead, 3, "a dead letter")
    await asyncio.sleep(1.0)  # time for a loop: a retry or a reclaim would show up now
    [letter] = await dead_letters(redis)
    assert letter.entry_id == entry_id
    assert letter.stream == NORMAL
    assert await pending_count(redis, NORMAL) == 0
    assert len(calls) == handler_calls
    assert len(hooked) == 1
    assert isinstance(hooked[0], PoisonMessage)


async def test_a_crashed_consumers_entry_is_reclaimed(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    await ensure_groups(redis, {GROUP: DOWNLOAD_LANES})
    await publisher.send(command(1), NORMAL)
    # "dead-1" reads the entry and dies without acknowledging it.
    taken = await redis.xreadgroup(GROUP, "dead-1", {NORMAL: ">"}, count=1)
    assert taken
    deliveries: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        deliveries.append(delivery)

    began = time.monotonic()
    start_consumer(handler, claim_idle_s=1.0, lease_renew_s=0.3)

    async def reclaimed() -> bool:
        return bool(deliveries)

    await eventually(reclaimed, 3, "the entry reclaimed")
    assert time.monotonic() - began < 2.5
    [delivery] = deliveries
    assert delivery.attempt == 2
    assert DOWNLOAD_DECODER.decode(delivery.body) == command(1)

    async def acked() -> bool:
        return await pending_count(redis, NORMAL) == 0

    await eventually(acked, 2, "the reclaimed entry acknowledged")


@pytest.mark.parametrize(
    ("lease_renew_s", "expected_runs"),
    [(0.3, 1), (30.0, 2)],
    ids=["renewed-lease-keeps-it", "no-renewal-loses-it"],
)
async def test_a_renewed_lease_keeps_a_slow_entry_from_being_reclaimed(
    redis: Redis,
    publisher: BrokerPublisher,
    start_consumer: Callable[..., Running],
    lease_renew_s: float,
    expected_runs: int,
) -> None:
    runs: list[tuple[str, int]] = []

    def slow_handler(name: str) -> Callable[[Delivery], Awaitable[None]]:
        async def handler(delivery: Delivery) -> None:
            runs.append((name, delivery.attempt))
            await asyncio.sleep(3.0)

        return handler

    await ensure_groups(redis, {GROUP: DOWNLOAD_LANES})
    await publisher.send(command(1), NORMAL)
    start_consumer(slow_handler("a"), name="a", claim_idle_s=1.0, lease_renew_s=lease_renew_s)

    async def started() -> bool:
        return bool(runs)

    await eventually(started, 2, "the first run")
    start_consumer(slow_handler("b"), name="b", claim_idle_s=1.0, lease_renew_s=lease_renew_s)
    await asyncio.sleep(3.2)
    assert len(runs) == expected_runs, runs
    assert runs[0] == ("a", 1)


async def test_stop_waits_for_a_slow_handler_and_acks_it(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    started = asyncio.Event()
    finished: list[str] = []

    async def handler(delivery: Delivery) -> None:
        started.set()
        await asyncio.sleep(1.0)
        finished.append(file_id_of(delivery))

    running = start_consumer(handler, shutdown_grace_s=3.0)
    await publisher.send(command(1), NORMAL)
    await asyncio.wait_for(started.wait(), 3)
    took_s = await running.stop()
    assert finished == ["file-1"]
    assert took_s < 2.5
    assert await pending_count(redis, NORMAL) == 0


async def test_stop_gives_up_on_a_handler_after_the_grace_and_leaves_it_pending(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    started = asyncio.Event()
    finished: list[str] = []
    cancelled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        started.set()
        try:
            await asyncio.sleep(10.0)
        except asyncio.CancelledError:
            cancelled.append(file_id_of(delivery))
            raise
        finished.append(file_id_of(delivery))

    running = start_consumer(handler, shutdown_grace_s=0.3)
    await publisher.send(command(1), NORMAL)
    await asyncio.wait_for(started.wait(), 3)
    took_s = await running.stop()
    assert took_s < 2.0
    assert finished == []
    assert cancelled == ["file-1"]
    assert await pending_count(redis, NORMAL) == 1
    assert await redis.xlen(DEAD_STREAM) == 0


async def test_stop_reads_no_new_work(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    started = asyncio.Event()
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(file_id_of(delivery))
        started.set()
        await asyncio.sleep(0.5)

    running = start_consumer(handler, concurrency=1, shutdown_grace_s=3.0)
    await publisher.send(command(1), NORMAL)
    await asyncio.wait_for(started.wait(), 3)
    await publisher.send(command(2), NORMAL)
    await running.stop()
    assert handled == ["file-1"]
    # The second entry is still there for the next consumer, never delivered.
    assert await pending_count(redis, NORMAL) == 0
    assert len(await redis.xrange(NORMAL)) == 2


async def test_the_consumer_recreates_its_groups_after_a_flush(
    redis: Redis, publisher: BrokerPublisher, start_consumer: Callable[..., Running]
) -> None:
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(file_id_of(delivery))

    start_consumer(handler)
    await publisher.send(command(1), NORMAL)

    async def first() -> bool:
        return handled == ["file-1"]

    await eventually(first, 3, "the first entry handled")
    await redis.flushdb()
    await asyncio.sleep(0.2)
    await publisher.send(command(2), HIGH)

    async def second() -> bool:
        return handled == ["file-1", "file-2"]

    await eventually(second, 4, "an entry published after the flush handled")
    assert await redis.xinfo_groups(HIGH)


class SwallowsCancel:
    """A Redis client whose EVAL swallows one cancellation, as asyncio.wait_for does on 3.11.

    redis-py wraps every send in `asyncio.wait_for`; on Python 3.11 a cancel arriving as the
    send completes is lost (CPython gh-86296). The consumer must still stop.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.swallowed = 0
        self.in_eval = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def eval(self, *args: Any) -> int:
        self.in_eval.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.swallowed += 1
        return 0


async def test_stop_returns_even_when_a_library_swallows_the_cancel(redis: Redis) -> None:
    client = SwallowsCancel(redis)

    async def handler(delivery: Delivery) -> None:
        pass

    consumer = StreamConsumer(
        redis=client,  # type: ignore[arg-type]
        streams=DOWNLOAD_LANES,
        group=GROUP,
        consumer="consumer-1",
        handler=handler,
        policy=ConsumerPolicy(shutdown_grace_s=1.0),
    )
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(client.in_eval.wait(), 3)
        consumer.stop()
        await asyncio.wait_for(asyncio.shield(task), 4)
    finally:
        if not task.done():
            task.cancel()
            for _ in range(20):  # the point of the test: one cancel may not be enough
                if (await asyncio.wait({task}, timeout=0.1))[0]:
                    break
                task.cancel()
    assert client.swallowed == 1
