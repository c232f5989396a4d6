"""Processor wiring: the processing lanes (`downlink:process:*`), run by shared.runner.

The processor reads lanes of its own, so a burst of processing never holds up downloads, and
keeps them trimmed (the gateway's reconciler trims the download lanes and the events stream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.processor.handlers import build_composite, failure_event, process_file
from services.processor.resources import Processor, open_processor
from shared.consumer import ConsumerPolicy
from shared.events import PROCESS_DECODER, BuildComposite, ProcessFile
from shared.runner import WorkerSpec, run_worker
from shared.streams import PROCESS_LANES, PROCESSOR_GROUP

if TYPE_CHECKING:
    from shared.consumer import Delivery
    from shared.settings import Settings

ProcessCommand = ProcessFile | BuildComposite


async def handle(command: ProcessCommand, p: Processor, _: Delivery) -> None:
    if isinstance(command, ProcessFile):
        await process_file(command, p.deps)
    else:
        await build_composite(command, p.deps)


async def on_dead(
    c: ProcessCommand, p: Processor, delivery: Delivery, error: BaseException
) -> None:
    # The job waits for every file's processing and every composite: tell it this one ended,
    # with the reason, instead of leaving it open until its timeout.
    await p.deps.publisher.publish(failure_event(c, error, delivery.attempt))


async def serve(settings: Settings) -> None:
    """Run one processor until SIGTERM/SIGINT, then drain within the grace period."""
    await run_worker(
        settings,
        WorkerSpec(
            name="processor",
            streams=PROCESS_LANES,
            group=PROCESSOR_GROUP,
            decoder=PROCESS_DECODER,
            resources=open_processor,
            handler=handle,
            # One message per worker process: a command holds at most one worker at a time,
            # so more would only queue inside the pool while their leases tick.
            policy=ConsumerPolicy.from_settings(settings, concurrency=settings.process_workers),
            on_dead=on_dead,
            trimmed_streams=PROCESS_LANES,
            metrics_port=settings.metrics_port,
            details=lambda p: {"workers": settings.process_workers, "pids": p.pool.pids},
        ),
    )
