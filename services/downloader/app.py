"""Downloader wiring: Redis, broker, HTTP session, storage and the lane consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

import aiohttp
import msgspec

from services.downloader.fetch import FetchLimits
from services.downloader.handlers import DownloadDeps, download_file, failure_event
from services.downloader.limits import AddressGuard, GuardedResolver, HostLimits
from services.downloader.state import CancelWatcher, RedisCompletions, RedisNames
from shared.broker import BrokerPublisher, create_broker
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer
from shared.errors import PoisonMessage
from shared.events import COMMAND_DECODER, DownloadFile
from shared.redis_client import open_redis
from shared.storage import open_storage
from shared.streams import DOWNLOAD_LANES, DOWNLOADER_GROUP, consumer_name
from shared.telemetry import create_tracer_provider

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)


def decode_command(delivery: Delivery) -> DownloadFile:
    try:
        return COMMAND_DECODER.decode(delivery.body)
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"undecodable download command {delivery.entry_id}: {exc}") from None


async def serve(settings: Settings) -> None:
    """Run one downloader process until SIGTERM/SIGINT, then drain within the grace period."""
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
                connector=aiohttp.TCPConnector(
                    resolver=GuardedResolver(guard), limit=0, ttl_dns_cache=60
                ),
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
            completions=RedisCompletions(redis, retention_s),
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

        consumer = StreamConsumer(
            redis=redis,
            streams=DOWNLOAD_LANES,
            group=DOWNLOADER_GROUP,
            consumer=worker,
            handler=handle,
            on_dead=on_dead,
            policy=ConsumerPolicy(
                concurrency=settings.download_concurrency,
                max_tries=settings.max_tries,
                retry_backoff_s=settings.retry_backoff_s,
                claim_idle_s=settings.claim_idle_s,
                lease_renew_s=settings.lease_renew_s,
                shutdown_grace_s=settings.shutdown_grace_s,
            ),
            tracer_provider=tracer_provider,
        )
        listener = asyncio.create_task(cancellations.listen())
        stack.callback(listener.cancel)
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
