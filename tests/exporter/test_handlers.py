"""build_export on real Redis and local storage: archives, events, idempotency, cancel, safety."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import zipfile
from typing import TYPE_CHECKING, Any

import pytest

from services.exporter.handlers import build_export, part_id
from shared.errors import ChecksumMismatch, JobCancelled, PermanentError, TooLarge
from shared.events import ExportProgress, ExportReady
from shared.storage.keys import archive_key
from shared.streams import EXPORT_CANCEL_CHANNEL, export_cancelled_key
from tests.exporter.archives import check_sums, extract, same_bytes
from tests.exporter.conftest import MIB, USER, build_command

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from shared.storage.local import LocalPart, LocalStorage
    from tests.exporter.conftest import Exporter, MakeExporter, StoreFiles


class RemoteLikeStorage:
    """Local storage seen as an object store: no local paths, reads in (slow) chunks."""

    def __init__(self, inner: LocalStorage, *, delay_s: float = 0.0, chunk: int = MIB) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.chunk = chunk
        self.reads = 0

    async def open_part(self, part: str, *, resume: bool) -> LocalPart:
        return await self.inner.open_part(part, resume=resume)

    async def discard_part(self, part: str) -> None:
        await self.inner.discard_part(part)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def size(self, key: str) -> int:
        return await self.inner.size(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    def local_path(self, key: str) -> None:
        return None

    async def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = MIB
    ) -> AsyncIterator[bytes]:
        self.reads += 1
        async for piece in self.inner.read(key, start, end, chunk_size=self.chunk):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield piece


def _archive(exporter: Exporter, event: ExportReady) -> Path:
    return exporter.storage.root / event.filepath


@pytest.mark.parametrize("export_format", ["zip", "tar.gz"])
async def test_an_export_lands_under_its_key_with_its_digest_and_events(
    exporter: Exporter, store_files: StoreFiles, tmp_path: Path, export_format: Any
) -> None:
    items = store_files(30, size=100 * 1024)
    command = build_command(items, export_format)
    ready = await build_export(command, exporter.deps, attempt=1)

    assert ready.filepath == f"{USER}/exports/{command.export_id}.{export_format}"
    assert ready.filepath == archive_key(command.user_id, command.export_id, command.format)
    archive = _archive(exporter, ready)
    assert ready.size == archive.stat().st_size
    assert ready.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert ready.file_count == 30
    assert exporter.parts() == []
    assert exporter.publisher.events[-1] == ready
    progress = exporter.publisher.of(ExportProgress)
    assert progress
    assert progress[0].files_done == 0
    out = extract(archive, tmp_path / "out", export_format)
    assert all(same_bytes(out / i.arcname, exporter.storage.root / i.filepath) for i in items)
    assert len(check_sums(out)) == 32


async def test_a_redelivered_command_is_answered_without_a_rebuild(
    exporter: Exporter, store_files: StoreFiles
) -> None:
    command = build_command(store_files(3))
    first = await build_export(command, exporter.deps, attempt=1)
    stat = os.stat(_archive(exporter, first))
    exporter.publisher.events.clear()

    again = await build_export(command, exporter.deps, attempt=2)

    assert again == first
    assert exporter.publisher.events == [first]  # re-announced, same event id
    assert os.stat(_archive(exporter, first)).st_mtime_ns == stat.st_mtime_ns


async def test_what_a_killed_attempt_left_in_the_part_is_thrown_away(
    exporter: Exporter, store_files: StoreFiles, tmp_path: Path
) -> None:
    command = build_command(store_files(5))
    part = await exporter.storage.open_part(part_id(command.export_id), resume=False)
    part.write(b"PK\x03\x04 half an archive from a SIGKILLed exporter" * 1000)
    await part.close()

    ready = await build_export(command, exporter.deps, attempt=2)

    archive = _archive(exporter, ready)
    with zipfile.ZipFile(archive) as opened:
        assert opened.testzip() is None
    assert ready.size == archive.stat().st_size
    assert exporter.parts() == []


async def test_no_half_archive_is_ever_visible_under_the_key(
    make_exporter: MakeExporter, storage: LocalStorage, store_files: StoreFiles
) -> None:
    slow = RemoteLikeStorage(storage, delay_s=0.02, chunk=256 * 1024)
    exporter = make_exporter(storage_port=slow)
    command = build_command(store_files(4, size=2 * MIB))
    key = storage.root / archive_key(command.user_id, command.export_id, command.format)
    build = asyncio.create_task(build_export(command, exporter.deps, attempt=1))
    seen_part = False
    while not build.done():
        if key.exists():
            # Renamed into place whole: the part is gone and the archive is complete.
            assert exporter.parts() == []
            with zipfile.ZipFile(key) as opened:
                assert opened.testzip() is None
            break
        seen_part = seen_part or bool(exporter.parts())
        await asyncio.sleep(0.01)
    await build
    ready = build.result()
    assert seen_part
    assert key.exists()
    assert slow.reads == 4  # every source came through storage.read in chunks
    with zipfile.ZipFile(key) as opened:
        assert opened.testzip() is None
    assert ready.sha256 == hashlib.sha256(key.read_bytes()).hexdigest()


async def test_a_cancel_aborts_a_running_build_and_removes_its_part(
    make_exporter: MakeExporter, storage: LocalStorage, store_files: StoreFiles
) -> None:
    exporter = make_exporter(storage_port=RemoteLikeStorage(storage, delay_s=0.05))
    await asyncio.sleep(0.1)  # the cancel listener subscribes
    command = build_command(store_files(6, size=3 * MIB))
    build = asyncio.create_task(build_export(command, exporter.deps, attempt=1))
    while not exporter.parts():
        await asyncio.sleep(0.01)
    await exporter.redis.set(export_cancelled_key(command.export_id), b"1")
    await exporter.redis.publish(EXPORT_CANCEL_CHANNEL, command.export_id)

    with pytest.raises(JobCancelled):
        await asyncio.wait_for(build, 5)
    assert exporter.parts() == []
    assert not (
        storage.root / archive_key(command.user_id, command.export_id, command.format)
    ).exists()
    assert not exporter.publisher.of(ExportReady)


async def test_a_cancelled_export_is_skipped_and_its_part_discarded(
    exporter: Exporter, store_files: StoreFiles
) -> None:
    command = build_command(store_files(2))
    part = await exporter.storage.open_part(part_id(command.export_id), resume=False)
    part.write(b"left over")
    await part.close()
    await exporter.redis.set(export_cancelled_key(command.export_id), b"1")

    with pytest.raises(JobCancelled):
        await build_export(command, exporter.deps, attempt=1)
    assert exporter.parts() == []
    assert exporter.publisher.events == []


async def test_a_shutdown_mid_build_stops_the_writer_and_keeps_nothing(
    make_exporter: MakeExporter, storage: LocalStorage, store_files: StoreFiles
) -> None:
    exporter = make_exporter(storage_port=RemoteLikeStorage(storage, delay_s=0.05))
    command = build_command(store_files(4, size=3 * MIB))
    build = asyncio.create_task(build_export(command, exporter.deps, attempt=1))
    while not exporter.parts():
        await asyncio.sleep(0.01)
    build.cancel()
    with pytest.raises(asyncio.CancelledError):
        await build
    assert exporter.parts() == []
    assert not (
        storage.root / archive_key(command.user_id, command.export_id, command.format)
    ).exists()


async def test_an_export_over_the_size_limit_fails_for_good(
    make_exporter: MakeExporter, store_files: StoreFiles
) -> None:
    exporter = make_exporter(max_size_bytes=100_000)
    command = build_command(store_files(3))
    with pytest.raises(TooLarge, match="DOWNLINK_MAX_EXPORT_SIZE"):
        await build_export(command, exporter.deps, attempt=1)
    assert exporter.parts() == []


async def test_a_changed_source_fails_the_export_and_leaves_no_part(
    exporter: Exporter, store_files: StoreFiles
) -> None:
    items = store_files(3)
    (exporter.storage.root / items[2].filepath).write_bytes(b"z" * items[2].size)
    with pytest.raises(ChecksumMismatch, match="SHA-256"):
        await build_export(build_command(items), exporter.deps, attempt=1)
    assert exporter.parts() == []


async def test_a_missing_source_fails_the_export(
    exporter: Exporter, store_files: StoreFiles
) -> None:
    items = store_files(2)
    (exporter.storage.root / items[1].filepath).unlink()
    with pytest.raises(PermanentError, match="no object"):
        await build_export(build_command(items), exporter.deps, attempt=1)
    assert exporter.parts() == []


async def test_a_symlink_planted_in_storage_is_never_followed(
    exporter: Exporter, store_files: StoreFiles, tmp_path: Path
) -> None:
    items = store_files(2)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"another user's bytes")
    planted = exporter.storage.root / items[1].filepath
    planted.unlink()
    planted.symlink_to(secret)
    with pytest.raises(PermanentError, match="symbolic link"):
        await build_export(build_command(items), exporter.deps, attempt=1)
    assert exporter.parts() == []


async def test_an_empty_selection_is_refused(exporter: Exporter) -> None:
    with pytest.raises(PermanentError, match="no files"):
        await build_export(build_command([]), exporter.deps, attempt=1)


async def test_a_publisher_that_swallows_cancels_cannot_hold_the_build(
    exporter: Exporter, store_files: StoreFiles
) -> None:
    class Swallowing:
        """Like redis-py on Python 3.11: a cancel landing as a send completes is lost."""

        def __init__(self) -> None:
            self.events: list[object] = []

        async def publish(self, event: object) -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.02)
            self.events.append(event)

    deps = dataclasses.replace(exporter.deps, publisher=Swallowing())
    ready = await asyncio.wait_for(
        build_export(build_command(store_files(3)), deps, attempt=1), timeout=10
    )
    assert ready.file_count == 3
