"""Downloader wiring: the download lanes, `download_file` and its hooks, run by shared.runner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.downloader.handlers import download_file, failure_event, retrying_event
from services.downloader.resources import Downloader, open_downloader
from shared.consumer import ConsumerPolicy
from shared.events import DOWNLOAD_DECODER, DownloadFile
from shared.runner import Listener, WorkerSpec, run_worker
from shared.streams import DOWNLOAD_LANES, DOWNLOADER_GROUP

if TYPE_CHECKING:
    from shared.consumer import Delivery
    from shared.settings import Settings


async def on_dead(c: DownloadFile, d: Downloader, delivery: Delivery, error: BaseException) -> None:
    await d.deps.storage.discard_part(c.file_id)
    await d.deps.publisher.publish(failure_event(c, error, delivery.attempt))


async def on_retry(
    c: DownloadFile, d: Downloader, delivery: Delivery, error: BaseException, delay_s: float
) -> None:
    # Lets the tracker close this try's row in the execution history.
    await d.deps.publisher.publish(retrying_event(c, error, delivery.attempt, delay_s))


async def serve(settings: Settings) -> None:
    """Run one downloader process until SIGTERM/SIGINT, then drain within the grace period."""
    await run_worker(
        settings,
        WorkerSpec(
            name="downloader",
            streams=DOWNLOAD_LANES,
            group=DOWNLOADER_GROUP,
            decoder=DOWNLOAD_DECODER,
            resources=open_downloader,
            handler=lambda c, d, delivery: download_file(c, d.deps, attempt=delivery.attempt),
            policy=ConsumerPolicy.from_settings(
                settings, concurrency=settings.download_concurrency
            ),
            on_dead=on_dead,
            on_retry=on_retry,
            listeners=(Listener("cancel watcher", lambda d: d.cancellations.listen()),),
            metrics_port=settings.metrics_port,
        ),
    )
