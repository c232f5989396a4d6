"""Processor wiring: Redis, broker, storage, the process pool and the processing-lane consumer.

CPU work never runs on the event loop: handlers hand it to the pool, so the loop stays free to
renew leases, publish events and read the next command. The processor reads its own lanes
(`downlink:process:*`), so a burst of processing never holds up downloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from services.processor import tasks
from services.processor.cancellations import RedisCancellations
from services.processor.handlers import (
    ProcessDeps,
    build_composite,
    failure_event,
    process_file,
)
from services.processor.pool import WorkerPool
from services.processor.staging import Staging
from shared.broker import BrokerPublisher, create_broker
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.errors import PoisonMessage
from shared.events import PROCESS_DECODER, BuildComposite, ProcessFile
from shared.redis_client import open_redis
from shared.storage import open_storage
from shared.streams import PROCESS_LANES, PROCESSOR_GROUP, consumer_name
from shared.telemetry import create_tracer_provider
from shared.trim import trim_stream
from shared.workers import worker_telemetry

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.settings import Settings

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 60.0


def decode_command(delivery: Delivery) -> ProcessFile | BuildComposite:
    try:
        command: ProcessFile | BuildComposite = PROCESS_DECODER.decode(delivery.body)
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"undecodable processing command {delivery.entry_id}: {exc}") from None
    return command


async def _trim_lanes(redis: Redis) -> None:
    """Keep the processing lanes bounded: drop entries every group has acknowledged.

    The gateway's reconciler trims the download lanes and the events stream; the processing
    lanes are trimmed by their consumers, never past an entry still pending (shared.trim).
    """
    while True:
        await asyncio.sleep(TRIM_INTERVAL_S)
        for lane in PROCESS_LANES:
            try:
                await trim_stream(redis, lane)
            except (RedisError, OSError) as exc:
                log.warning("trimming %s failed: %s", lane, exc)


async def serve(settings: Settings) -> None:
    """Run one processor until SIGTERM/SIGINT, then drain within the grace period."""
    tracer_provider = create_tracer_provider("processor")
    worker = consumer_name()
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_redis(settings.redis_url))
        broker = create_broker(settings.redis_url, tracer_provider)
        await broker.connect()
        stack.push_async_callback(broker.stop)
        staging = Staging.create(open_storage(settings.storage_url))
        stack.callback(staging.close)
        pool = await stack.enter_async_context(
            WorkerPool(settings.process_workers, initializer=tasks.init_worker)
        )
        publisher = BrokerPublisher(broker)
        deps = ProcessDeps(
            staging=staging,
            publisher=publisher,
            runner=pool,
            cancellations=RedisCancellations(redis),
            tracer=tracer_provider.get_tracer("downlink.processor"),
        )

        async def handle(delivery: Delivery) -> None:
            command = decode_command(delivery)
            if isinstance(command, ProcessFile):
                await process_file(command, deps)
            else:
                await build_composite(command, deps)

        async def on_dead(delivery: Delivery, error: BaseException) -> None:
            # The job waits for every file's processing and every composite: tell it this one
            # ended, with the reason, instead of leaving it open until its timeout.
            await publisher.publish(
                failure_event(decode_command(delivery), error, delivery.attempt)
            )

        consumer = StreamConsumer(
            redis=redis,
            streams=PROCESS_LANES,
            group=PROCESSOR_GROUP,
            consumer=worker,
            handler=handle,
            on_dead=on_dead,
            # One message per worker process: a command holds at most one worker at a time,
            # so more would only queue inside the pool while their leases tick.
            policy=ConsumerPolicy.from_settings(settings, concurrency=settings.process_workers),
            tracer_provider=tracer_provider,
        )
        trimmer = asyncio.create_task(_trim_lanes(redis))
        stack.callback(trimmer.cancel)
        await stack.enter_async_context(worker_telemetry(redis, settings, "processor", consumer))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, consumer.stop)
        log.info(
            "processor %s reading %s with %d workers",
            worker,
            ", ".join(PROCESS_LANES),
            settings.process_workers,
            extra={"settings": settings.describe(), "pids": pool.pids},
        )
        await consumer.run()
        log.info("processor %s stopped", worker)
    tracer_provider.shutdown()
