"""Downloader fixtures: DownloadDeps built by hand on real Redis, storage and HTTP, no broker."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from services.downloader.budget import HostBudget
from services.downloader.fetch import FetchLimits
from services.downloader.handlers import DownloadDeps
from services.downloader.limits import AddressGuard, guarded_connector
from services.downloader.state import CancelWatcher, RedisCompletions, RedisNames
from shared.events import DownloadFile, Event
from shared.ids import JobId, UserId, new_file_id
from shared.redis_client import open_redis
from shared.storage.local import LocalStorage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

    from redis.asyncio import Redis

USER = UserId("user-1")
JOB = JobId("job-1")
RETENTION_S = 3600


@dataclass
class RecordingPublisher:
    """An EventPublisher that keeps what it was given."""

    events: list[Event] = field(default_factory=list)

    async def publish(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Downloader:
    """Everything a test needs to drive and inspect `download_file`."""

    deps: DownloadDeps
    publisher: RecordingPublisher
    storage: LocalStorage
    cancellations: CancelWatcher
    redis: Redis

    def parts(self) -> list[str]:
        """Names of part files left in storage."""
        return sorted(p.name for p in (self.storage.root / ".parts").iterdir())

    def objects(self) -> dict[str, bytes]:
        """Every committed object, by key."""
        root = self.storage.root
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and ".parts" not in p.relative_to(root).parts
        }


class MakeDownloader(Protocol):
    def __call__(
        self,
        *,
        allow_private: bool = True,
        allowed_networks: Iterable[str] = (),
        max_size_bytes: int = 50 * 1024**2,
        max_redirects: int = 3,
        per_host: int = 4,
        resolver: AbstractResolver | None = None,
        file_deadline_s: float = 60.0,
        segment_threshold_bytes: int = 64 * 1024**2,
        segments: int = 4,
    ) -> Downloader: ...


class StaticResolver(AbstractResolver):
    """Resolves made-up names to fixed loopback addresses, so no DNS is asked."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.hosts[host]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


def command(
    url: str,
    *,
    job_id: JobId = JOB,
    filename: str | None = None,
    sha256: str | None = None,
) -> DownloadFile:
    return DownloadFile(
        job_id=job_id,
        file_id=new_file_id(),
        user_id=USER,
        url=url,
        filename=filename,
        sha256=sha256,
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url) as client:
        yield client


@pytest.fixture
async def make_downloader(redis: Redis, tmp_path: Path) -> AsyncIterator[MakeDownloader]:
    """Build Downloaders whose sessions are closed after the test; the storage is shared."""
    storage = LocalStorage(tmp_path / "storage")
    async with contextlib.AsyncExitStack() as stack:
        built: list[Downloader] = []

        def make(
            *,
            allow_private: bool = True,
            allowed_networks: Iterable[str] = (),
            max_size_bytes: int = 50 * 1024**2,
            max_redirects: int = 3,
            per_host: int = 4,
            resolver: AbstractResolver | None = None,
            file_deadline_s: float = 60.0,
            segment_threshold_bytes: int = 64 * 1024**2,
            segments: int = 4,
        ) -> Downloader:
            guard = AddressGuard(allow_private=allow_private, allowed_networks=allowed_networks)
            # The same connector as services/downloader/app.py: names and every peer are checked.
            session = aiohttp.ClientSession(
                connector=guarded_connector(guard, resolver),
                timeout=aiohttp.ClientTimeout(total=30),
                auto_decompress=False,
            )
            stack.push_async_callback(session.close)
            budget = HostBudget(redis, per_host)
            stack.push_async_callback(budget.close)
            publisher = RecordingPublisher()
            cancellations = CancelWatcher(redis)
            deps = DownloadDeps(
                session=session,
                storage=storage,
                publisher=publisher,
                completions=RedisCompletions(redis, RETENTION_S),
                names=RedisNames(redis, RETENTION_S),
                cancellations=cancellations,
                guard=guard,
                host_limits=budget,
                limits=FetchLimits(
                    max_size_bytes=max_size_bytes,
                    max_redirects=max_redirects,
                    progress_interval_s=0.05,
                    file_deadline_s=file_deadline_s,
                    segment_threshold_bytes=segment_threshold_bytes,
                    segments=segments,
                ),
                worker="test-worker-1",
            )
            downloader = Downloader(deps, publisher, storage, cancellations, redis)
            built.append(downloader)
            return downloader

        yield make


@pytest.fixture
async def downloader(make_downloader: MakeDownloader) -> Downloader:
    """A downloader with the address guard off, as tests and the local demo run it."""
    return make_downloader()
