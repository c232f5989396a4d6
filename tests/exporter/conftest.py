"""Exporter fixtures: files in local storage, commands over them, and ExportDeps on real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from services.exporter.handlers import ExportDeps, ExportLimits
from services.exporter.state import ExportCancelWatcher, RedisExportCompletions
from shared.events import BuildExport, ExportEvent, ExportFormat, ExportItem
from shared.ids import JobId, UserId
from shared.redis_client import open_redis
from shared.storage.local import LocalStorage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from redis.asyncio import Redis

USER = UserId("11111111-1111-4111-8111-111111111111")
JOB = JobId("22222222-2222-4222-8222-222222222222")
KIB = 1024
MIB = 1024 * KIB
# Extensions of the 30-file sets: compressed formats (stored in a zip) and others (deflated).
SUFFIXES = (".tif", ".csv", ".jp2", ".json", ".png", ".txt")


def file_bytes(index: int, size: int, suffix: str) -> bytes:
    """Content that looks like its type: noise for images, repetitive text for the rest."""
    if suffix in (".tif", ".jp2", ".png", ".jpg", ".zip", ".gz"):
        return random.Random(index).randbytes(size)
    line = f"{index},row,{index * 7 % 13},lon,lat,value\n".encode()
    return (line * (size // len(line) + 1))[:size]


class StoreFiles(Protocol):
    def __call__(
        self,
        count: int,
        *,
        size: int = 64 * KIB,
        user: UserId = USER,
        job: JobId = JOB,
        names: Sequence[str] | None = None,
    ) -> list[ExportItem]: ...


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def store_files(storage: LocalStorage) -> StoreFiles:
    """Write `count` files under `<user>/<job>/` and describe them as ExportItems."""

    def store(
        count: int,
        *,
        size: int = 64 * KIB,
        user: UserId = USER,
        job: JobId = JOB,
        names: Sequence[str] | None = None,
    ) -> list[ExportItem]:
        items = []
        for index in range(count):
            suffix = SUFFIXES[index % len(SUFFIXES)]
            name = names[index] if names else f"scene_{index:02d}{suffix}"
            # Sizes differ from file to file, one of them empty, so no size is special-cased.
            length = 0 if index == 3 else size + index * 1013
            data = file_bytes(index, length, suffix)
            key = f"{user}/{job}/{name}"
            path = storage.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            items.append(
                ExportItem(
                    file_id=f"{index:08d}-0000-4000-8000-{index:012d}",
                    job_id=job,
                    filepath=key,
                    arcname=f"{job}/{name}",
                    size=length,
                    sha256=hashlib.sha256(data).hexdigest(),
                    url=f"https://example.com/data/{name}",
                )
            )
        return items

    return store


def build_command(
    items: Sequence[ExportItem],
    export_format: ExportFormat = "zip",
    *,
    export_id: str = "33333333-3333-4333-8333-333333333333",
    include_metadata: bool = True,
    user: UserId = USER,
) -> BuildExport:
    jobs = sorted({item.job_id for item in items})
    return BuildExport(
        export_id=export_id,
        user_id=user,
        format=export_format,
        include_metadata=include_metadata,
        items=tuple(items),
        jobs=tuple(
            {"job_id": job, "status": "completed", "created_at": "2026-11-20T10:00:00+00:00"}
            for job in jobs
        ),
    )


@dataclass
class RecordingPublisher:
    """An EventPublisher that keeps what it was given."""

    events: list[Any] = field(default_factory=list)

    async def publish(self, event: Any) -> None:
        self.events.append(event)

    def of(self, kind: type[ExportEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Exporter:
    """ExportDeps on real Redis and local storage, with handles to inspect them."""

    deps: ExportDeps
    publisher: RecordingPublisher
    storage: LocalStorage
    cancellations: ExportCancelWatcher
    redis: Redis

    def parts(self) -> list[str]:
        return sorted(p.name for p in (self.storage.root / ".parts").iterdir())


class MakeExporter(Protocol):
    def __call__(
        self,
        *,
        max_size_bytes: int = ...,
        progress_interval_s: float = ...,
        storage_port: Any = None,
    ) -> Exporter: ...


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url) as client:
        yield client


@pytest.fixture
async def make_exporter(redis: Redis, storage: LocalStorage) -> AsyncIterator[MakeExporter]:
    """Build an Exporter; `storage_port` stands in for the local storage as the deps' port."""
    listeners: list[asyncio.Task[None]] = []

    def make(
        *,
        max_size_bytes: int = 10 * 1024 * MIB,
        progress_interval_s: float = 0.05,
        storage_port: Any = None,
    ) -> Exporter:
        publisher = RecordingPublisher()
        cancellations = ExportCancelWatcher(redis)
        listeners.append(asyncio.create_task(cancellations.listen()))
        deps = ExportDeps(
            storage=storage_port or storage,
            publisher=publisher,
            completions=RedisExportCompletions(redis, 3600),
            cancellations=cancellations,
            limits=ExportLimits(
                max_size_bytes=max_size_bytes, progress_interval_s=progress_interval_s
            ),
            worker="test-exporter",
        )
        return Exporter(deps, publisher, storage, cancellations, redis)

    yield make
    for task in listeners:
        # redis-py may swallow a cancel that lands as a read completes (asyncio.wait_for on
        # Python 3.11): cancel until the task is really gone.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def exporter(make_exporter: MakeExporter) -> Exporter:
    made = make_exporter()
    await asyncio.sleep(0.05)  # let the cancel listener subscribe
    return made
