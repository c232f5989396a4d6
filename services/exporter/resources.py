"""What one exporter process opens for its handler: storage, completions and the cancel watcher.

The exporter needs Redis and storage only, never PostgreSQL: the gateway resolved the selection
into the BuildExport command, and the tracker projects the events published here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.exporter.handlers import ExportDeps, ExportLimits
from services.exporter.state import ExportCancelWatcher, RedisExportCompletions
from shared.storage import open_storage

if TYPE_CHECKING:
    from shared.runner import WorkerContext


@dataclass(frozen=True, slots=True)
class Exporter:
    """The handler's dependencies, and the cancel watcher that must listen beside them."""

    deps: ExportDeps
    cancellations: ExportCancelWatcher


@contextlib.asynccontextmanager
async def open_exporter(context: WorkerContext) -> AsyncIterator[Exporter]:
    """The exporter's resources for the worker's life (nothing of them needs closing)."""
    settings = context.settings
    cancellations = ExportCancelWatcher(context.redis)
    deps = ExportDeps(
        storage=open_storage(settings.storage_url),
        publisher=context.publisher,
        completions=RedisExportCompletions(context.redis, settings.retention_s),
        cancellations=cancellations,
        limits=ExportLimits(
            max_size_bytes=settings.max_export_size_bytes,
            progress_interval_s=settings.progress_interval_s,
        ),
        worker=context.worker,
    )
    yield Exporter(deps, cancellations)
