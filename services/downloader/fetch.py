"""Streaming one URL into a storage part with aiohttp: redirects, limits, hashing, progress."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp

from shared.errors import HTTPStatusError, PermanentError, TooLarge, TransientError, map_errors

if TYPE_CHECKING:
    from services.downloader.limits import AddressGuard
    from shared.storage import PartWriter

ProgressCallback = Callable[[int, int | None, float], Awaitable[None]]

# Statuses worth another try; every other error status is final.
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_SCHEMES = {"http", "https"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Bodies are hashed and written in blocks this big, so each hop to the writer thread carries
# enough work to be worth it; about three are held per download (buffer, block, block written).
_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a completed fetch produced."""

    final_url: str
    size: int
    sha256: str
    content_type: str | None
    disposition_name: str | None
    resumed_from: int = 0


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Per-request bounds."""

    max_size_bytes: int
    max_redirects: int
    progress_interval_s: float
    file_deadline_s: float = 6 * 3600.0


async def fetch_into(
    session: aiohttp.ClientSession,
    url: str,
    part: PartWriter,
    *,
    guard: AddressGuard,
    limits: FetchLimits,
    on_progress: ProgressCallback,
) -> Fetched:
    """Stream `url` into `part`, hashing as it writes; the part holds the whole body on return.

    Bytes an earlier attempt left in the part are kept when the server confirms, with a 206
    whose Content-Range starts where the part ends, that the resource has not changed
    (If-Range on its strong ETag or Last-Modified); otherwise the download starts over.
    """
    with map_errors(url):
        resume_from, validator = part.size, part.meta.get("validator")
        digest = hashlib.sha256()
        if resume_from and validator and part.meta.get("url") == url:
            # The hash state cannot be saved, so it is rebuilt from the bytes on disk; before
            # asking, since aiohttp drops a body's buffered bytes if the server hangs up first.
            async for chunk in part.existing():
                digest.update(chunk)
            headers = {"Range": f"bytes={resume_from}-", "If-Range": validator}
            response = await _open(session, url, guard, limits.max_redirects, headers)
            if not _continues(response, resume_from):
                response.release()
                resume_from, digest = 0, hashlib.sha256()
                response = await _open(session, url, guard, limits.max_redirects)
        else:
            resume_from = 0
            response = await _open(session, url, guard, limits.max_redirects)
        async with response:
            return await _stream(
                response, url, part, resume_from, digest, limits=limits, on_progress=on_progress
            )


async def _stream(
    response: aiohttp.ClientResponse,
    url: str,
    part: PartWriter,
    resume_from: int,
    digest: hashlib._Hash,
    *,
    limits: FetchLimits,
    on_progress: ProgressCallback,
) -> Fetched:
    total = _total_size(response)
    if total is not None and total > limits.max_size_bytes:
        raise TooLarge(f"{url} is {total} bytes, over the limit of {limits.max_size_bytes}")
    if not resume_from:
        await part.truncate()
    await part.save_meta({"url": url, "validator": _validator(response) or ""})
    meter = _RateMeter()
    writer = _BlockWriter(part, digest)
    received = resume_from
    next_report = time.monotonic() + limits.progress_interval_s
    try:
        while block := await _read_block(response.content, next_report):
            received += len(block)
            if received > limits.max_size_bytes:
                raise TooLarge(f"{url} is over the limit of {limits.max_size_bytes} bytes")
            await writer.put(block, inline=response.content.at_eof())
            meter.add(len(block))
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + limits.progress_interval_s
                await on_progress(received, total, meter.rate_bps())
    finally:
        await writer.settle()
    if total is not None and received != total:
        raise TransientError(f"{url} ended after {received} of {total} bytes")
    disposition = response.content_disposition
    return Fetched(
        final_url=str(response.url),
        size=received,
        sha256=digest.hexdigest(),
        content_type=response.content_type if "Content-Type" in response.headers else None,
        disposition_name=disposition.filename if disposition else None,
        resumed_from=resume_from,
    )


def _continues(response: aiohttp.ClientResponse, offset: int) -> bool:
    """Whether `response` is the rest of the resource from `offset`, not a fresh body."""
    if response.status != 206:
        return False
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return bool(match) and int(match.group(1)) == offset  # type: ignore[union-attr]


def _total_size(response: aiohttp.ClientResponse) -> int | None:
    if response.status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        return int(match.group(3)) if match and match.group(3) != "*" else None
    return response.content_length


def _validator(response: aiohttp.ClientResponse) -> str | None:
    # A weak ETag may not be used with If-Range; Last-Modified is the fallback validator.
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


async def _open(
    session: aiohttp.ClientSession,
    url: str,
    guard: AddressGuard,
    max_redirects: int,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    # Redirects are followed here, not by aiohttp, so every hop's scheme and host are checked;
    # the URL the guard parsed and checked is the very object fetched, never re-parsed.
    for _hop in range(max_redirects + 1):
        target = guard.check_url(url)
        if target.scheme not in _SCHEMES or not target.raw_host:
            raise PermanentError(f"refusing to fetch {url!r}: only http(s) URLs with a host")
        response = await session.get(
            target,
            allow_redirects=False,
            headers={"Accept-Encoding": "identity", **(headers or {})},
        )
        if response.status in _REDIRECTS and "Location" in response.headers:
            response.release()
            url = urljoin(url, response.headers["Location"])
            continue
        if response.status == 416 and headers and "Range" in headers:
            return response  # the part no longer fits the resource: the caller starts over
        if response.status >= 400:
            response.release()
            if response.status in _RETRYABLE:
                raise TransientError(
                    f"HTTP {response.status} from {url}",
                    retry_after_s=_retry_after_s(response.headers.get("Retry-After")),
                )
            raise HTTPStatusError(response.status, url)
        return response
    raise PermanentError(f"more than {max_redirects} redirects from {url}")


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


async def _read_block(content: aiohttp.StreamReader, report_at: float) -> bytes:
    """The next `_BLOCK_BYTES` of the body, fewer at its end or once a progress report is due
    (a slow link still reports); empty at the end."""
    pieces: list[bytes] = []
    wanted = _BLOCK_BYTES
    while wanted > 0:
        try:
            piece = await content.read(wanted)
        except aiohttp.ClientError:
            if not pieces:
                raise
            break  # keep what arrived for a resume; the next read raises the error again
        if not piece:
            break
        pieces.append(piece)
        wanted -= len(piece)
        if time.monotonic() >= report_at:
            break
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class _BlockWriter:
    """Hashes and writes blocks in a worker thread, one block while the next is read, so the
    network, the hash and the disk overlap; hashlib and file writes release the GIL."""

    def __init__(self, part: PartWriter, digest: hashlib._Hash) -> None:
        self._part = part
        self._digest = digest
        self._pending: asyncio.Future[None] | None = None

    async def put(self, block: bytes, *, inline: bool) -> None:
        """Take `block` once the one before is written; `inline` (the body's last block)
        skips the thread hop, which would cost a small file more than its hash."""
        await self.settle()
        if inline:
            self._absorb(block)
        else:
            self._pending = asyncio.ensure_future(asyncio.to_thread(self._absorb, block))

    async def settle(self) -> None:
        """Wait for the block in flight, through a cancel too: the part is closed next, and no
        thread may still be writing to it then."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        cancelled = False
        while not pending.done():
            try:
                await asyncio.wait({pending})
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError
        pending.result()

    def _absorb(self, block: bytes) -> None:
        self._digest.update(block)
        self._part.write(block)


class _RateMeter:
    """Bytes per second over the last few seconds."""

    def __init__(self, window_s: float = 3.0) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self._total = 0

    def add(self, size: int) -> None:
        self._total += size
        now = time.monotonic()
        self._samples.append((now, self._total))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window_s:
            self._samples.popleft()

    def rate_bps(self) -> float:
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        return (last - first) / (end - start) if end > start else 0.0
