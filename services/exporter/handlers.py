"""Build one export: a BuildExport command in, an archive in storage and an ExportReady event out.

Plain async functions over Protocol-typed ports; no framework or Redis imports here. The archive
is written by `archive.write_archive` in a worker thread into a storage part named after the
export, and only a finished archive is committed (renamed) to its key: a build that dies leaves
no half archive anywhere a reader looks, and the next attempt starts the part again from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from opentelemetry import trace

from services.exporter.archive import (
    ArchiveAborted,
    HashingSink,
    Member,
    Progress,
    SourceMismatch,
    chunks_reader,
    write_archive,
)
from services.exporter.manifest import metadata_files
from shared.errors import ChecksumMismatch, JobCancelled, PermanentError, TooLarge
from shared.events import ExportFailed, ExportProgress, ExportReady
from shared.ids import new_event_id
from shared.storage import StorageError
from shared.storage.keys import archive_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    from shared.broker import EventPublisher
    from shared.events import BuildExport, ExportItem
    from shared.storage import Storage

log = logging.getLogger(__name__)
tracer = trace.get_tracer("downlink.exporter")


class ExportCompletions(Protocol):
    """Remembers built archives, so a redelivered command is answered without a rebuild."""

    async def get(self, export_id: str) -> ExportReady | None: ...

    async def put(self, event: ExportReady) -> None: ...


class ExportCancellations(Protocol):
    """Which exports are cancelled; `watch` yields a flag that is set when one is."""

    async def is_cancelled(self, export_id: str) -> bool: ...

    def watch(self, export_id: str) -> AbstractAsyncContextManager[threading.Event]: ...


@dataclass(frozen=True, slots=True)
class ExportLimits:
    """Knobs of a build.

    Attributes:
        max_size_bytes: the largest selection (sum of source sizes) an export may hold.
        progress_interval_s: at most one ExportProgress per this many seconds.
    """

    max_size_bytes: int
    progress_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class ExportDeps:
    """Everything `build_export` needs, built once per process."""

    storage: Storage
    publisher: EventPublisher
    completions: ExportCompletions
    cancellations: ExportCancellations
    limits: ExportLimits
    worker: str


def part_id(export_id: str) -> str:
    """The storage part an export is written to; the same on every attempt, so a retry
    overwrites what a killed one left."""
    return f"export-{export_id}"


async def build_export(command: BuildExport, deps: ExportDeps, *, attempt: int) -> ExportReady:
    """Stream the command's items into one archive in storage and announce it; idempotent."""
    if await deps.cancellations.is_cancelled(command.export_id):
        await deps.storage.discard_part(part_id(command.export_id))
        raise JobCancelled(f"export {command.export_id} is cancelled")
    done = await deps.completions.get(command.export_id)
    if done is not None and await deps.storage.exists(done.filepath):
        # Re-announce: the event may be what was lost; its id makes the replay a no-op.
        await deps.publisher.publish(done)
        return done
    total = sum(item.size for item in command.items)
    if not command.items:
        raise PermanentError(f"export {command.export_id} has no files to put in an archive")
    if total > deps.limits.max_size_bytes:
        raise TooLarge(
            f"export of {total} bytes is over the {deps.limits.max_size_bytes}-byte limit "
            "(DOWNLINK_MAX_EXPORT_SIZE); export fewer files at a time"
        )
    with tracer.start_as_current_span(
        "export.build",
        attributes={
            "downlink.export_id": command.export_id,
            "downlink.export.format": command.format,
            "downlink.export.files": len(command.items),
            "downlink.export.source_bytes": total,
            "downlink.attempt": attempt,
        },
    ) as span:
        event = await _build(command, deps)
        span.set_attribute("downlink.export.archive_bytes", event.size)
    await deps.completions.put(event)
    await deps.publisher.publish(event)
    log.info(
        "export %s ready: %s (%d bytes, %d files)",
        command.export_id,
        event.filepath,
        event.size,
        event.file_count,
        extra={"export_id": command.export_id, "attempt": attempt},
    )
    return event


async def _build(command: BuildExport, deps: ExportDeps) -> ExportReady:
    key = archive_key(command.user_id, command.export_id, command.format)
    # resume=False: bytes a killed attempt left in the part are thrown away, never continued.
    part = await deps.storage.open_part(part_id(command.export_id), resume=False)
    sink = HashingSink(part)
    progress = Progress()
    committed = False
    started = time.monotonic()
    try:
        async with deps.cancellations.watch(command.export_id) as abort:
            done = asyncio.Event()
            reporter = asyncio.create_task(_report(command, deps, progress, done))
            try:
                await _in_thread(_writer(command, deps, sink, progress, abort), abort)
            finally:
                await _stop(reporter, done)
            # A cancel that arrived as the last byte went in still wins over the commit.
            if abort.is_set() or await deps.cancellations.is_cancelled(command.export_id):
                raise ArchiveAborted("export cancelled")
            await part.commit(key)
            committed = True
    except ArchiveAborted:
        raise JobCancelled(f"export {command.export_id} was cancelled") from None
    except SourceMismatch as exc:
        raise ChecksumMismatch(f"export {command.export_id}: {exc}") from None
    except StorageError as exc:
        raise PermanentError(f"export {command.export_id}: {exc}") from None
    finally:
        if not committed:
            await part.abort()
    elapsed_s = time.monotonic() - started
    log.info(
        "export %s: %d source bytes into %d archive bytes in %.2fs",
        command.export_id,
        progress.bytes_done,
        sink.size,
        elapsed_s,
        extra={"export_id": command.export_id},
    )
    return ExportReady(
        event_id=new_event_id(),
        export_id=command.export_id,
        at=time.time(),
        filepath=key,
        size=sink.size,
        sha256=sink.sha256,
        file_count=len(command.items),
    )


def _writer(
    command: BuildExport,
    deps: ExportDeps,
    sink: HashingSink,
    progress: Progress,
    abort: threading.Event,
) -> Callable[[], object]:
    loop = asyncio.get_running_loop()
    built_at = time.time()
    members = [_member(item, deps.storage, loop) for item in command.items]

    def run() -> object:
        return write_archive(
            sink,
            command.format,
            members,
            metadata=(
                (lambda written: metadata_files(command, written, built_at=built_at))
                if command.include_metadata
                else None
            ),
            progress=progress,
            abort=abort,
            mtime=built_at,
        )

    return run


async def _in_thread(run: Callable[[], object], abort: threading.Event) -> None:
    """Run `run` in a worker thread; on cancellation stop it and wait until it has stopped,
    so the part is never aborted while the thread still writes to it."""
    future = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        abort.set()
        with contextlib.suppress(BaseException):
            await future
        raise


async def _report(
    command: BuildExport, deps: ExportDeps, progress: Progress, done: asyncio.Event
) -> None:
    """Publish ExportProgress at most once per interval until `done` is set."""
    last: tuple[int, int] | None = None
    while not done.is_set():
        now = (progress.files_done, progress.bytes_done)
        if now != last:
            last = now
            with contextlib.suppress(Exception):  # progress is best effort; the build goes on
                await deps.publisher.publish(
                    ExportProgress(
                        event_id=new_event_id(),
                        export_id=command.export_id,
                        at=time.time(),
                        files_done=now[0],
                        bytes_done=now[1],
                    )
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), deps.limits.progress_interval_s)


async def _stop(reporter: asyncio.Task[None], done: asyncio.Event) -> None:
    # Stopped by a flag, not by cancel(): redis-py can swallow a cancel that lands as a send
    # completes (asyncio.wait_for on Python 3.11), and a reporter that lives on would keep the
    # build from ever returning. A cancel stays the fallback for a publish that hangs.
    done.set()
    finished, _ = await asyncio.wait({reporter}, timeout=5.0)
    if not finished:
        reporter.cancel()


# --- sources --------------------------------------------------------------------------------


def _member(item: ExportItem, storage: Storage, loop: asyncio.AbstractEventLoop) -> Member:
    if storage.local_path(item.filepath) is not None:

        def open_local() -> BinaryIO:
            # Storage's one check, in the archive's thread as each member's turn comes: a
            # planted link, a non-file or a file of another size fails the export unread.
            return storage.open_verified(item.filepath, item.size)

        return Member(item.arcname, item.size, item.sha256, open_local)

    def open_remote() -> BinaryIO:
        return chunks_reader(_bridge(storage.read(item.filepath), loop))

    return Member(item.arcname, item.size, item.sha256, open_remote)


def _bridge(chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
    """Pull an async iterator that lives on `loop` from a worker thread, one chunk at a time."""
    try:
        while True:
            chunk = asyncio.run_coroutine_threadsafe(_next(chunks), loop).result()
            if chunk is None:
                return
            yield chunk
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), loop).result()


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    return await anext(chunks, None)


def failure_event(command: BuildExport, error: BaseException) -> ExportFailed:
    """The ExportFailed event announcing that `command` gave up."""
    return ExportFailed(
        event_id=new_event_id(),
        export_id=command.export_id,
        at=time.time(),
        error=str(error) or type(error).__name__,
    )
