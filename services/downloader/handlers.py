"""Download one file: a DownloadFile command in, a FileDownloaded event out (or a domain error).

Plain async functions over Protocol-typed ports; no framework or Redis imports here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec
from opentelemetry import trace
from yarl import URL

from services.downloader.fetch import Fetched, FetchLimits, ProgressCallback, fetch_into
from services.downloader.naming import FALLBACK_NAME, choose_name, variants
from shared.errors import ChecksumMismatch, JobCancelled, PermanentError, TransientError
from shared.events import FileDownloaded, FileFailed, FileProgress, FileRetrying, FileStarted
from shared.ids import FileId, JobId, new_event_id
from shared.storage.keys import file_key

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import aiohttp

    from services.downloader.limits import AddressGuard, HostLimits
    from shared.broker import EventPublisher
    from shared.events import DownloadFile
    from shared.storage import Storage

log = logging.getLogger(__name__)
tracer = trace.get_tracer("downlink.downloader")


class Completions(Protocol):
    """Remembers finished files, so a redelivered command is skipped."""

    async def get(self, file_id: FileId) -> FileDownloaded | None: ...

    async def put(self, event: FileDownloaded) -> None: ...


Claim = Literal["new", "ours", "taken"]


class NameRegistry(Protocol):
    """Names taken inside a job; `claim` is atomic across every downloader."""

    async def claim(self, job_id: JobId, name: str, file_id: FileId) -> Claim:
        """ "new" when this call took the name, "ours" when this file took it before."""
        ...


class Cancellations(Protocol):
    """Which jobs are cancelled; `watch` turns a cancel into JobCancelled in the caller."""

    async def is_cancelled(self, job_id: JobId) -> bool: ...

    def watch(self, job_id: JobId) -> AbstractAsyncContextManager[None]: ...


@dataclass(frozen=True, slots=True)
class DownloadDeps:
    """Everything `download_file` needs, built once per process."""

    session: aiohttp.ClientSession
    storage: Storage
    publisher: EventPublisher
    completions: Completions
    names: NameRegistry
    cancellations: Cancellations
    guard: AddressGuard
    host_limits: HostLimits
    limits: FetchLimits
    worker: str


async def download_file(
    command: DownloadFile, deps: DownloadDeps, *, attempt: int
) -> FileDownloaded:
    """Fetch `command.url` into storage and announce it; idempotent per file id."""
    if await deps.cancellations.is_cancelled(command.job_id):
        raise JobCancelled(f"job {command.job_id} is cancelled")
    done = await deps.completions.get(command.file_id)
    if done is not None:
        # Re-announce: the event may be what was lost; its id makes the replay a no-op.
        await deps.publisher.publish(done)
        return done
    host = _host(command.url)
    with tracer.start_as_current_span(
        "download",
        attributes={
            "downlink.job_id": command.job_id,
            "downlink.file_id": command.file_id,
            "url.host": host,
            "downlink.attempt": attempt,
        },
    ) as span:
        try:
            async with (
                deps.cancellations.watch(command.job_id),
                deps.host_limits.slot(host),
                asyncio.timeout(deps.limits.file_deadline_s),
            ):
                event = await _start_and_fetch(command, deps, attempt)
        except JobCancelled:
            await deps.storage.discard_part(command.file_id)
            raise
        except TimeoutError:
            raise TransientError(
                f"{command.url} took longer than the {deps.limits.file_deadline_s:.0f} s deadline"
            ) from None
        span.set_attribute("downlink.bytes", event.size)
    await deps.completions.put(event)
    await deps.publisher.publish(event)
    log.info(
        "downloaded %s (%d bytes)",
        event.filepath,
        event.size,
        extra={"job_id": command.job_id, "file_id": command.file_id},
    )
    return event


async def _start_and_fetch(
    command: DownloadFile, deps: DownloadDeps, attempt: int
) -> FileDownloaded:
    start = _TryStart(command, deps, attempt)
    try:
        event = await _fetch_and_store(command, deps, start)
    except Exception:
        # The try's failure or retry is announced next: its start must be on record first.
        await start.announce()
        raise
    finally:
        start.stop_timer()
    return await start.carried_by(event)


class _TryStart:
    """A try's FileStarted, sent only once the file outlives the progress interval.

    Most files finish sooner: then the start time rides on FileDownloaded instead, one event
    on the wire instead of two, and the executions history stays exact.
    """

    def __init__(self, command: DownloadFile, deps: DownloadDeps, attempt: int) -> None:
        self.event = FileStarted(
            event_id=new_event_id(),
            job_id=command.job_id,
            at=time.time(),
            file_id=command.file_id,
            attempt=attempt,
            worker=deps.worker,
        )
        self._publisher = deps.publisher
        self._sent: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(
            deps.limits.progress_interval_s, self._send
        )

    def _send(self) -> None:
        if self._sent is None:
            self._sent = asyncio.create_task(self._publisher.publish(self.event))

    async def announce(self) -> None:
        """Send the start unless it was sent; returns once it is on the stream."""
        self._timer.cancel()
        self._send()
        assert self._sent is not None
        await asyncio.shield(self._sent)

    def stop_timer(self) -> None:
        self._timer.cancel()

    async def carried_by(self, event: FileDownloaded) -> FileDownloaded:
        """`event` naming its try, and carrying the start when that was never sent."""
        started_at = None
        if self._sent is None:
            started_at = self.event.at
        else:
            await asyncio.shield(self._sent)  # the start goes first on the stream
        return msgspec.structs.replace(
            event, started_at=started_at, attempt=self.event.attempt, worker=self.event.worker
        )


def _progress_reporter(
    command: DownloadFile, deps: DownloadDeps, start: _TryStart
) -> ProgressCallback:
    async def report(done: int, total: int | None, rate_bps: float) -> None:
        await start.announce()  # progress follows its try's start in the job's log
        await deps.publisher.publish(
            FileProgress(
                event_id=new_event_id(),
                job_id=command.job_id,
                at=time.time(),
                file_id=command.file_id,
                bytes_downloaded=done,
                total_bytes=total,
                rate_bps=rate_bps,
            )
        )

    return report


async def _fetch_and_store(
    command: DownloadFile, deps: DownloadDeps, start: _TryStart
) -> FileDownloaded:
    part = await deps.storage.open_part(command.file_id, resume=True)
    committed = False
    try:
        fetched = await fetch_into(
            deps.session,
            command.url,
            part,
            guard=deps.guard,
            limits=deps.limits,
            on_progress=_progress_reporter(command, deps, start),
            slots=deps.host_limits,
        )
        if command.sha256 is not None and fetched.sha256 != command.sha256:
            raise ChecksumMismatch(
                f"checksum mismatch for {command.url}: "
                f"expected {command.sha256}, got {fetched.sha256}"
            )
        name = await _unique_name(command, deps, fetched)
        key = file_key(command.user_id, command.job_id, name)
        await part.commit(key)
        committed = True
    except PermanentError:
        await part.abort()
        raise
    finally:
        if not committed and part.size == 0:
            await part.abort()
        elif not committed:
            # Kept for the next attempt to resume; a cancel or a dead letter discards it.
            await part.close()
    if fetched.resumed_from:
        log.info(
            "resumed %s at byte %d",
            command.url,
            fetched.resumed_from,
            extra={"job_id": command.job_id, "file_id": command.file_id},
        )
    return FileDownloaded(
        event_id=new_event_id(),
        job_id=command.job_id,
        at=time.time(),
        file_id=command.file_id,
        filename=name,
        filepath=key,
        size=fetched.size,
        sha256=fetched.sha256,
        content_type=fetched.content_type,
    )


async def _unique_name(command: DownloadFile, deps: DownloadDeps, fetched: Fetched) -> str:
    # After redirects the final URL names the file (`/download?id=7` -> `.../B04.tif`).
    wanted = choose_name(command.filename, fetched.disposition_name, fetched.final_url)
    if wanted == FALLBACK_NAME:
        wanted = choose_name(None, None, command.url)
    for candidate in variants(wanted):
        key = file_key(command.user_id, command.job_id, candidate)
        claim = await deps.names.claim(command.job_id, candidate, command.file_id)
        # A new claim on a name already on disk means the registry was lost (a Redis flush):
        # the file there belongs to another file id, so keep looking.
        if claim == "ours" or (claim == "new" and not await deps.storage.exists(key)):
            return candidate
    raise PermanentError(f"no free name for {wanted!r} in job {command.job_id}")


def failure_event(command: DownloadFile, error: BaseException, attempts: int) -> FileFailed:
    """The FileFailed event announcing that `command` gave up."""
    return FileFailed(
        event_id=new_event_id(),
        job_id=command.job_id,
        at=time.time(),
        file_id=command.file_id,
        error=str(error) or type(error).__name__,
        permanent=isinstance(error, PermanentError),
        attempts=attempts,
    )


def retrying_event(
    command: DownloadFile, error: BaseException, attempt: int, delay_s: float
) -> FileRetrying:
    """The FileRetrying event announcing that try `attempt` failed and runs again later."""
    return FileRetrying(
        event_id=new_event_id(),
        job_id=command.job_id,
        at=time.time(),
        file_id=command.file_id,
        attempt=attempt,
        error=str(error) or type(error).__name__,
        retry_in_s=round(delay_s, 3),
    )


def _host(url: str) -> str:
    """The host as the HTTP client will connect to it, so look-alike spellings share one limit.

    An unparsable URL keys nothing here; the fetch refuses it as a permanent error.
    """
    try:
        return URL(url).raw_host or ""
    except ValueError:
        return ""
