"""What one processor process opens for its handlers: staging on local disk and the process pool.

CPU work never runs on the event loop: handlers hand it to the pool, so the loop stays free to
renew leases, publish events and read the next command.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.processor import tasks
from services.processor.cancellations import RedisCancellations
from services.processor.handlers import ProcessDeps
from shared.process_pool import WorkerPool
from shared.storage import open_storage
from shared.storage.staging import Staging

if TYPE_CHECKING:
    from shared.runner import WorkerContext


@dataclass(frozen=True, slots=True)
class Processor:
    """The handlers' dependencies, and the pool behind them (its pids go in the start log)."""

    deps: ProcessDeps
    pool: WorkerPool


@contextlib.asynccontextmanager
async def open_processor(context: WorkerContext) -> AsyncIterator[Processor]:
    """The processor's resources for the worker's life: the pool stops, then staging is removed."""
    settings = context.settings
    staging = Staging.create(open_storage(settings.storage_url))
    try:
        async with WorkerPool(settings.process_workers, initializer=tasks.init_worker) as pool:
            deps = ProcessDeps(
                staging=staging,
                publisher=context.publisher,
                runner=pool,
                cancellations=RedisCancellations(context.redis),
                tracer=context.tracer_provider.get_tracer("downlink.processor"),
            )
            yield Processor(deps, pool)
    finally:
        staging.close()
