"""StreamConsumer's batched paths on real Redis: reads that fill every free slot, pipelined
acks, and batch handlers (acked after they return, handled one by one when they raise)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from shared.broker import BrokerPublisher, create_broker
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.redis_client import open_redis
from shared.streams import DOWNLOAD_LANES
from tests.shared.test_consumer import (
    GROUP,
    NORMAL,
    command,
    dead_letters,
    eventually,
    file_id_of,
    pending_count,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from redis.asyncio import Redis


@pytest.fixture
async def redis(own_redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(own_redis_url) as client:
        yield client


@pytest.fixture
async def publisher(own_redis_url: str, redis: Redis) -> AsyncIterator[BrokerPublisher]:
    broker = create_broker(own_redis_url)
    await broker.connect()
    try:
        yield BrokerPublisher(broker, redis)
    finally:
        await broker.stop()


async def calls(redis: Redis, command_name: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command_name}", {}).get("calls", 0))


async def publish(publisher: BrokerPublisher, count: int) -> None:
    for n in range(count):
        await publisher.send(command(n), NORMAL)


def consumer(redis: Redis, **kwargs: object) -> StreamConsumer:
    defaults: dict[str, object] = {
        "policy": ConsumerPolicy(concurrency=8, retry_backoff_s=0.05, shutdown_grace_s=0.2)
    }
    return StreamConsumer(
        redis=redis,
        streams=DOWNLOAD_LANES,
        group=GROUP,
        consumer="consumer-1",
        **(defaults | kwargs),  # type: ignore[arg-type]
    )


async def run_until(stream_consumer: StreamConsumer, done: asyncio.Event) -> None:
    task = asyncio.create_task(stream_consumer.run())
    try:
        await asyncio.wait_for(done.wait(), 20)
    finally:
        stream_consumer.stop()
        await asyncio.wait_for(task, 10)


async def test_one_read_fills_every_free_slot_and_acks_share_round_trips(
    redis: Redis, publisher: BrokerPublisher
) -> None:
    await publish(publisher, 80)
    handled: list[str] = []
    all_done = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        await asyncio.sleep(0.02)
        handled.append(file_id_of(delivery))
        if len(handled) == 80:
            all_done.set()

    await redis.config_resetstat()
    await run_until(consumer(redis, handler=handler), all_done)

    assert sorted(handled) == sorted(f"file-{n}" for n in range(80))
    assert await pending_count(redis, NORMAL) == 0
    # One entry per read asks the lane above NORMAL and NORMAL itself for every entry: 160 or
    # more XREADGROUPs (164 on the code before batched reads). Eight slots per read take about
    # 20; on a loaded machine handlers end staggered and reads fill fewer slots (46 seen in
    # CI), so the bound sits between the two.
    assert await calls(redis, "xreadgroup") <= 80
    assert await calls(redis, "xack") < 60


async def test_a_batch_handler_gets_whole_reads_acked_only_after_it_returns(
    redis: Redis, publisher: BrokerPublisher
) -> None:
    await publish(publisher, 100)
    batches: list[int] = []
    pending_inside: list[int] = []
    all_done = asyncio.Event()

    async def batch_handler(deliveries: Sequence[Delivery]) -> None:
        pending_inside.append(await pending_count(redis, NORMAL))
        batches.append(len(deliveries))
        if sum(batches) == 100:
            all_done.set()

    async def handler(delivery: Delivery) -> None:
        pytest.fail("the single handler ran although no batch failed")

    await run_until(
        consumer(redis, handler=handler, batch_handler=batch_handler, batch_size=32), all_done
    )

    assert sum(batches) == 100
    assert max(batches) == 32  # a read takes a whole batch, not one entry
    assert all(inside >= size for inside, size in zip(pending_inside, batches, strict=True))
    await eventually(
        lambda: _none_pending(redis), 5, "every entry acknowledged after its batch returned"
    )


@pytest.mark.parametrize(("linger_s", "expected"), [(0.0, [1, 1, 1, 1, 1]), (1.0, [1, 4])])
async def test_a_lingering_reader_gathers_entries_that_trickle_in_into_one_batch(
    redis: Redis, publisher: BrokerPublisher, linger_s: float, expected: list[int]
) -> None:
    batches: list[int] = []
    all_done = asyncio.Event()

    async def batch_handler(deliveries: Sequence[Delivery]) -> None:
        batches.append(len(deliveries))
        if sum(batches) == 5:
            all_done.set()

    async def handler(delivery: Delivery) -> None:
        pytest.fail("the single handler ran although no batch failed")

    async def trickle() -> None:
        for n in range(5):
            await publisher.send(command(n), NORMAL)
            if n == 0 or not linger_s:  # the reader is idle, waiting on the stream
                await eventually(lambda n=n: _sum_is(batches, n + 1), 5, f"entry {n} read")
            await asyncio.sleep(0.05)

    stream_consumer = consumer(
        redis,
        handler=handler,
        batch_handler=batch_handler,
        batch_size=64,
        batch_linger_s=linger_s,
        policy=ConsumerPolicy(concurrency=1, shutdown_grace_s=0.2),
    )
    feeding = asyncio.create_task(trickle())
    await run_until(stream_consumer, all_done)
    await feeding

    # The first entry is never held back; with a linger the four behind it share one batch.
    assert batches == expected


async def _sum_is(batches: list[int], total: int) -> bool:
    return sum(batches) == total


async def test_a_failing_batch_is_handled_entry_by_entry_isolating_the_poison_one(
    redis: Redis, publisher: BrokerPublisher
) -> None:
    await publish(publisher, 10)
    await redis.xadd(NORMAL, {b"__data__": b"not a frame"})
    handled: list[str] = []
    settled = asyncio.Event()

    async def batch_handler(deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            file_id_of(delivery)  # raises PoisonMessage for the bad entry: the batch fails

    async def handler(delivery: Delivery) -> None:
        handled.append(file_id_of(delivery))
        if len(handled) == 10:
            settled.set()

    await run_until(
        consumer(redis, handler=handler, batch_handler=batch_handler, batch_size=64), settled
    )

    assert sorted(handled) == sorted(f"file-{n}" for n in range(10))
    await eventually(lambda: _dead_letter_count_is(redis, 1), 5, "the bad entry dead-lettered")
    assert await pending_count(redis, NORMAL) == 0


async def test_a_batch_cut_short_by_a_stop_stays_pending_for_a_reclaim(
    redis: Redis, publisher: BrokerPublisher
) -> None:
    await publish(publisher, 5)
    started = asyncio.Event()

    async def batch_handler(deliveries: Sequence[Delivery]) -> None:
        started.set()
        await asyncio.sleep(3600)

    async def handler(delivery: Delivery) -> None:
        await asyncio.sleep(3600)

    await run_until(
        consumer(redis, handler=handler, batch_handler=batch_handler, batch_size=16), started
    )

    assert await pending_count(redis, NORMAL) == 5


async def _none_pending(redis: Redis) -> bool:
    return await pending_count(redis, NORMAL) == 0


async def _dead_letter_count_is(redis: Redis, count: int) -> bool:
    return len(await dead_letters(redis)) == count
