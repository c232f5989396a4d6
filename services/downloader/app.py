"""Downloader wiring: Redis, broker, HTTP session, storage, the lane consumer and its telemetry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import TYPE_CHECKING

import aiohttp
import msgspec

from services.downloader.fetch import FetchLimits
from services.downloader.handlers import DownloadDeps, download_file, failure_event
from services.downloader.limits import AddressGuard, HostLimits, guarded_connector
from services.downloader.state import CancelWatcher, RedisCompletions, RedisNames
from shared import metrics
from shared.broker import BrokerPublisher, create_broker
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.errors import PoisonMessage
from shared.events import COMMAND_DECODER, DownloadFile, FileDownloaded, FileRetrying
from shared.ids import new_event_id
from shared.redis_client import open_redis
from shared.storage import open_storage
from shared.streams import DOWNLOAD_LANES, DOWNLOADER_GROUP, consumer_name
from shared.telemetry import create_tracer_provider
from shared.workers import worker_telemetry

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)


def decode_command(delivery: Delivery) -> DownloadFile:
    try:
        return COMMAND_DECODER.decode(delivery.body)
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"undecodable download command {delivery.entry_id}: {exc}") from None


class CountedCompletions(RedisCompletions):
    """Completions that count the bytes of each file this process stored.

    `put` runs once per file actually downloaded (a skipped redelivery only reads), which makes
    it the one place where stored bytes are neither missed nor counted twice.
    """

    async def put(self, event: FileDownloaded) -> None:
        await super().put(event)
        metrics.DOWNLOADED_BYTES.inc(event.size)


def retrying_event(delivery: Delivery, error: BaseException, delay_s: float) -> FileRetrying:
    """The FileRetrying event announcing that `delivery`'s try failed and runs again later."""
    command = decode_command(delivery)
    return FileRetrying(
        event_id=new_event_id(),
        job_id=command.job_id,
        at=time.time(),
        file_id=command.file_id,
        attempt=delivery.attempt,
        error=str(error) or type(error).__name__,
        retry_in_s=round(delay_s, 3),
    )


async def serve(settings: Settings) -> None:
    """Run one downloader process until SIGTERM/SIGINT, then drain within the grace period."""
    # Installed as the process's provider: the handlers' "download" spans record into it.
    tracer_provider = create_tracer_provider("downloader")
    worker = consumer_name()
    retention_s = settings.retention_days * 86_400
    guard = AddressGuard(
        allow_private=settings.allow_private_networks, allowed_networks=settings.allowed_networks
    )
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(open_redis(settings.redis_url))
        broker = create_broker(settings.redis_url, tracer_provider)
        await broker.connect()
        stack.push_async_callback(broker.stop)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=guarded_connector(guard, ttl_dns_cache_s=60),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=settings.connect_timeout_s,
                    sock_read=settings.read_timeout_s,
                ),
                auto_decompress=False,
            )
        )
        publisher = BrokerPublisher(broker)
        cancellations = CancelWatcher(redis)
        deps = DownloadDeps(
            session=session,
            storage=open_storage(settings.storage_url),
            publisher=publisher,
            completions=CountedCompletions(redis, retention_s),
            names=RedisNames(redis, retention_s),
            cancellations=cancellations,
            guard=guard,
            host_limits=HostLimits(settings.per_host_concurrency),
            limits=FetchLimits(
                max_size_bytes=settings.max_file_size_bytes,
                max_redirects=settings.max_redirects,
                progress_interval_s=settings.progress_interval_s,
                file_deadline_s=settings.file_deadline_s,
            ),
            worker=worker,
        )

        async def handle(delivery: Delivery) -> None:
            await download_file(decode_command(delivery), deps, attempt=delivery.attempt)

        async def on_dead(delivery: Delivery, error: BaseException) -> None:
            command = decode_command(delivery)
            await deps.storage.discard_part(command.file_id)
            await publisher.publish(failure_event(command, error, delivery.attempt))

        async def on_retry(delivery: Delivery, error: BaseException, delay_s: float) -> None:
            # Lets the tracker close this try's row in the execution history.
            await publisher.publish(retrying_event(delivery, error, delay_s))

        consumer = StreamConsumer(
            redis=redis,
            streams=DOWNLOAD_LANES,
            group=DOWNLOADER_GROUP,
            consumer=worker,
            handler=handle,
            on_dead=on_dead,
            on_retry=on_retry,
            policy=ConsumerPolicy.from_settings(
                settings, concurrency=settings.download_concurrency
            ),
            tracer_provider=tracer_provider,
        )
        listener = asyncio.create_task(cancellations.listen())
        stack.callback(listener.cancel)
        await stack.enter_async_context(worker_telemetry(redis, settings, "downloader", consumer))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, consumer.stop)
        log.info(
            "downloader %s reading %s",
            worker,
            ", ".join(DOWNLOAD_LANES),
            extra={"settings": settings.describe()},
        )
        await consumer.run()
        log.info("downloader %s stopped", worker)
    tracer_provider.shutdown()
