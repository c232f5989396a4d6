"""Exporter wiring: Redis, broker, storage and the consumer of `downlink:exports`.

The exporter needs Redis and storage only, never PostgreSQL: the gateway resolved the selection
into the BuildExport command, and the tracker projects the events published here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

import msgspec

from services.exporter.handlers import (
    ExportDeps,
    ExportLimits,
    build_export,
    failure_event,
    part_id,
)
from services.exporter.state import ExportCancelWatcher, RedisExportCompletions
from shared.broker import BrokerPublisher, create_broker
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.errors import PoisonMessage
from shared.events import EXPORT_DECODER, BuildExport
from shared.redis_client import open_redis
from shared.storage import open_storage
from shared.streams import EXPORT_STREAM, EXPORTER_GROUP, consumer_name
from shared.telemetry import create_tracer_provider
from shared.workers import worker_telemetry

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

# Archives are CPU-bound (deflate, SHA-256) and each runs in a thread: two keep two cores busy.
EXPORT_CONCURRENCY = 2


def decode_command(delivery: Delivery) -> BuildExport:
    try:
        return EXPORT_DECODER.decode(delivery.body)
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"undecodable export command {delivery.entry_id}: {exc}") from None


async def serve(settings: Settings) -> None:
    """Run one exporter process until SIGTERM/SIGINT, then drain within the grace period."""
    tracer_provider = create_tracer_provider("exporter")
    worker = consumer_name()
    retention_s = settings.retention_days * 86_400
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_redis(settings.redis_url))
        broker = create_broker(settings.redis_url, tracer_provider)
        await broker.connect()
        stack.push_async_callback(broker.stop)
        publisher = BrokerPublisher(broker)
        cancellations = ExportCancelWatcher(redis)
        deps = ExportDeps(
            storage=open_storage(settings.storage_url),
            publisher=publisher,
            completions=RedisExportCompletions(redis, retention_s),
            cancellations=cancellations,
            limits=ExportLimits(
                max_size_bytes=settings.max_export_size_bytes,
                progress_interval_s=settings.progress_interval_s,
            ),
            worker=worker,
        )

        async def handle(delivery: Delivery) -> None:
            await build_export(decode_command(delivery), deps, attempt=delivery.attempt)

        async def on_dead(delivery: Delivery, error: BaseException) -> None:
            command = decode_command(delivery)
            await deps.storage.discard_part(part_id(command.export_id))
            await publisher.publish(failure_event(command, error))

        consumer = StreamConsumer(
            redis=redis,
            streams=(EXPORT_STREAM,),
            group=EXPORTER_GROUP,
            consumer=worker,
            handler=handle,
            on_dead=on_dead,
            policy=ConsumerPolicy.from_settings(settings, concurrency=EXPORT_CONCURRENCY),
            tracer_provider=tracer_provider,
        )
        listener = asyncio.create_task(cancellations.listen())
        stack.callback(listener.cancel)
        await stack.enter_async_context(worker_telemetry(redis, settings, "exporter", consumer))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, consumer.stop)
        log.info(
            "exporter %s reading %s",
            worker,
            EXPORT_STREAM,
            extra={"settings": settings.describe()},
        )
        await consumer.run()
        log.info("exporter %s stopped", worker)
    tracer_provider.shutdown()
