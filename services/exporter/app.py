"""Exporter wiring: the consumer of `downlink:exports` and its hooks, run by shared.runner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.exporter.handlers import build_export, failure_event, part_id
from services.exporter.resources import Exporter, open_exporter
from shared.consumer import ConsumerPolicy
from shared.events import EXPORT_DECODER, BuildExport
from shared.runner import Listener, WorkerSpec, run_worker
from shared.streams import EXPORT_STREAM, EXPORTER_GROUP

if TYPE_CHECKING:
    from shared.consumer import Delivery
    from shared.settings import Settings

# Archives are CPU-bound (deflate, SHA-256) and each runs in a thread: two keep two cores busy.
EXPORT_CONCURRENCY = 2


async def on_dead(c: BuildExport, e: Exporter, _: Delivery, error: BaseException) -> None:
    await e.deps.storage.discard_part(part_id(c.export_id))
    await e.deps.publisher.publish(failure_event(c, error))


async def serve(settings: Settings) -> None:
    """Run one exporter process until SIGTERM/SIGINT, then drain within the grace period."""
    await run_worker(
        settings,
        WorkerSpec(
            name="exporter",
            streams=(EXPORT_STREAM,),
            group=EXPORTER_GROUP,
            decoder=EXPORT_DECODER,
            resources=open_exporter,
            handler=lambda c, e, delivery: build_export(c, e.deps, attempt=delivery.attempt),
            policy=ConsumerPolicy.from_settings(settings, concurrency=EXPORT_CONCURRENCY),
            on_dead=on_dead,
            listeners=(Listener("cancel watcher", lambda e: e.cancellations.listen()),),
            metrics_port=settings.metrics_port,
        ),
    )
