"""What one downloader process opens for its handler: the guarded HTTP session, storage, state."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from services.downloader.budget import HostBudget
from services.downloader.fetch import FetchLimits
from services.downloader.handlers import DownloadDeps
from services.downloader.limits import AddressGuard, guarded_connector
from services.downloader.state import CancelWatcher, RedisCompletions, RedisNames
from shared import metrics
from shared.redis_client import KeyReads
from shared.storage import open_storage

if TYPE_CHECKING:
    from shared.events import FileDownloaded
    from shared.runner import WorkerContext
    from shared.settings import Settings


class CountedCompletions(RedisCompletions):
    """Completions that count the bytes of each file this process stored.

    `put` runs once per file actually downloaded (a skipped redelivery only reads), which makes
    it the one place where stored bytes are neither missed nor counted twice.
    """

    async def put(self, event: FileDownloaded) -> None:
        await super().put(event)
        metrics.DOWNLOADED_BYTES.inc(event.size)


@dataclass(frozen=True, slots=True)
class Downloader:
    """The handler's dependencies, and the cancel watcher that must listen beside them."""

    deps: DownloadDeps
    cancellations: CancelWatcher


@contextlib.asynccontextmanager
async def open_downloader(context: WorkerContext) -> AsyncIterator[Downloader]:
    """The downloader's resources for the worker's life; the session closes on the way out."""
    settings = context.settings
    retention_s = settings.retention_s
    guard = AddressGuard(
        allow_private=settings.allow_private_networks, allowed_networks=settings.allowed_networks
    )
    reads = KeyReads(context.redis)  # cancel flags and completions, one MGET per round trip
    cancellations = CancelWatcher(context.redis, reads=reads)
    budget = HostBudget(
        context.redis, settings.per_host_concurrency, lease_s=settings.host_slot_lease_s
    )
    async with _session(settings, guard) as session, budget:
        deps = DownloadDeps(
            session=session,
            storage=open_storage(settings.storage_url),
            publisher=context.publisher,
            completions=CountedCompletions(context.redis, retention_s, reads=reads),
            names=RedisNames(context.redis, retention_s),
            cancellations=cancellations,
            guard=guard,
            host_limits=budget,
            limits=FetchLimits(
                max_size_bytes=settings.max_file_size_bytes,
                max_redirects=settings.max_redirects,
                progress_interval_s=settings.progress_interval_s,
                file_deadline_s=settings.file_deadline_s,
                segment_threshold_bytes=settings.segment_threshold_bytes,
                segments=settings.segments,
            ),
            worker=context.worker,
        )
        yield Downloader(deps, cancellations)


def _session(settings: Settings, guard: AddressGuard) -> aiohttp.ClientSession:
    # One session per process: its connector pools connections and caches DNS for every file.
    return aiohttp.ClientSession(
        connector=guarded_connector(guard, ttl_dns_cache_s=60),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        ),
        auto_decompress=False,
    )
