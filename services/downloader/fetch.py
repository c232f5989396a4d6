"""Streaming one URL into a storage part with aiohttp: redirects, limits, hashing, progress."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import aiohttp
from opentelemetry import trace

from services.downloader import segments as segments_
from services.downloader.blocks import BlockWriter, RateMeter, read_block
from shared.errors import HTTPStatusError, PermanentError, TooLarge, TransientError, map_errors

if TYPE_CHECKING:
    from services.downloader.limits import AddressGuard, HostLimits
    from shared.storage import PartWriter

ProgressCallback = Callable[[int, int | None, float], Awaitable[None]]

# Statuses worth another try; every other error status is final.
_RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
_REDIRECTS = {301, 302, 303, 307, 308}
_SCHEMES = {"http", "https"}
# The record a resume checks the server's copy against costs a file write and a rename. A body
# this small is fetched whole again after a crash instead: it cannot save what it costs.
_WHOLE_AGAIN_BYTES = 256 * 1024
tracer = trace.get_tracer("downlink.downloader")


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
    segment_threshold_bytes: int = 64 << 20
    segments: int = 4


async def fetch_into(
    session: aiohttp.ClientSession,
    url: str,
    part: PartWriter,
    *,
    guard: AddressGuard,
    limits: FetchLimits,
    on_progress: ProgressCallback,
    slots: HostLimits | None = None,
) -> Fetched:
    """Stream `url` into `part`, hashing as it writes; the part holds the whole body on return.

    Bytes an earlier attempt left in the part are kept when the server confirms, with a 206
    whose Content-Range starts where the part ends, that the resource has not changed
    (If-Range on its strong ETag or Last-Modified); otherwise the download starts over. With
    `slots` (the host budget), a body of at least `limits.segment_threshold_bytes` from a
    server that serves ranges is fetched as `limits.segments` parallel ranges instead.
    """
    with map_errors(url):
        return await _Fetcher(session, url, part, guard, limits, on_progress, slots).fetch()


@dataclass(frozen=True, slots=True)
class _Fetcher:
    session: aiohttp.ClientSession
    url: str
    part: PartWriter
    guard: AddressGuard
    limits: FetchLimits
    on_progress: ProgressCallback
    slots: HostLimits | None

    async def fetch(self) -> Fetched:
        meta = self.part.meta
        if meta.get("url") != self.url or not meta.get("validator"):
            meta = {}
        response: aiohttp.ClientResponse | None = None
        if meta.get("segments") and self.slots is not None:
            fetched, response = await self._resume_segments(meta)
            if fetched is not None:
                return fetched
        elif self.part.size and meta and not meta.get("segments"):
            fetched = await self._resume_stream(meta["validator"])
            if fetched is not None:
                return fetched
        if response is None:
            response = await self._open(self.url)
        return await self._from_start(response)

    async def _open(
        self, url: str, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        return await _open(self.session, url, self.guard, self.limits.max_redirects, headers)

    async def _resume_stream(self, validator: str) -> Fetched | None:
        resume_from, digest = self.part.size, hashlib.sha256()
        # The hash state cannot be saved, so it is rebuilt from the bytes on disk; before
        # asking, since aiohttp drops a body's buffered bytes if the server hangs up first.
        async for chunk in self.part.existing():
            digest.update(chunk)
        headers = {"Range": f"bytes={resume_from}-", "If-Range": validator}
        response = await self._open(self.url, headers)
        if not _continues(response, resume_from):
            response.release()
            return None
        async with response:
            return await self._stream(response, resume_from, digest)

    async def _resume_segments(
        self, meta: dict[str, str]
    ) -> tuple[Fetched | None, aiohttp.ClientResponse | None]:
        """The download finished from the recorded segments, or else a fresh 200 body when
        the server sent one instead (the resource changed), to start over from."""
        size = int(meta.get("size", "0") or 0)
        segments = segments_.decode(meta["segments"], size)
        if segments is None:
            return None, None
        first = next((s for s in segments if s.left), segments[-1])
        # All fetched but not committed: the last byte again, so the server vouches for it.
        first.done = min(first.done, first.end - 1)
        headers = {"Range": f"bytes={first.done}-{first.end - 1}", "If-Range": meta["validator"]}
        response = await self._open(self.url, headers)
        if response.status == 200:
            return None, response
        if response.status != 206 or segments_.content_range(response) != (
            first.done,
            first.end,
            size,
        ):
            response.release()
            return None, None
        return await self._segmented(response, segments, meta["validator"]), None

    async def _from_start(self, response: aiohttp.ClientResponse) -> Fetched:
        total = _total_size(response)
        if total is not None and total > self.limits.max_size_bytes:
            response.release()
            raise TooLarge(
                f"{self.url} is {total} bytes, over the limit of {self.limits.max_size_bytes}"
            )
        validator = _validator(response)
        if (
            self.slots is not None
            and validator
            and total is not None
            and segments_.worth_splitting(
                response,
                threshold_bytes=self.limits.segment_threshold_bytes,
                count=self.limits.segments,
            )
        ):
            await self.part.truncate()
            await self.part.allocate(total)
            return await self._segmented(
                response, segments_.split(total, self.limits.segments), validator
            )
        async with response:
            return await self._stream(response, 0, hashlib.sha256())

    async def _segmented(
        self,
        response: aiohttp.ClientResponse,
        segments: list[segments_.Segment],
        validator: str,
    ) -> Fetched:
        assert self.slots is not None
        final_url = str(response.url)
        total = segments[-1].end
        source = segments_.Source(
            url=final_url,
            validator=validator,
            total=total,
            open_range=partial(self._open, final_url),
            slots=self.slots,
            host=response.url.raw_host or "",
        )
        run = segments_.SegmentedFetch(
            self.part,
            segments,
            source,
            meta={"url": self.url, "validator": validator, "size": str(total)},
            progress_interval_s=self.limits.progress_interval_s,
            on_progress=self.on_progress,
        )
        await run.save()
        with tracer.start_as_current_span(
            "download.segments",
            attributes={"downlink.segments": len(segments), "downlink.bytes_kept": run.kept},
        ):
            sha256 = await run.run(response)
        return _fetched(response, total, sha256, run.kept)

    async def _stream(
        self, response: aiohttp.ClientResponse, resume_from: int, digest: hashlib._Hash
    ) -> Fetched:
        url, part, limits = self.url, self.part, self.limits
        total = _total_size(response)
        if total is not None and total > limits.max_size_bytes:
            raise TooLarge(f"{url} is {total} bytes, over the limit of {limits.max_size_bytes}")
        if not resume_from:
            await part.truncate()
        if total is None or total > _WHOLE_AGAIN_BYTES:
            await part.save_meta({"url": url, "validator": _validator(response) or ""})
        meter = RateMeter()
        writer = BlockWriter(partial(_absorb, part, digest))
        received = resume_from
        next_report = time.monotonic() + limits.progress_interval_s
        try:
            while block := await read_block(response.content, next_report):
                received += len(block)
                if received > limits.max_size_bytes:
                    raise TooLarge(f"{url} is over the limit of {limits.max_size_bytes} bytes")
                await writer.put(block, inline=response.content.at_eof())
                meter.add(len(block))
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + limits.progress_interval_s
                    await self.on_progress(received, total, meter.rate_bps())
        finally:
            await writer.settle()
        if total is not None and received != total:
            raise TransientError(f"{url} ended after {received} of {total} bytes")
        return _fetched(response, received, digest.hexdigest(), resume_from)


def _absorb(part: PartWriter, digest: hashlib._Hash, block: bytes) -> None:
    digest.update(block)
    part.write(block)


def _fetched(response: aiohttp.ClientResponse, size: int, sha256: str, kept: int) -> Fetched:
    disposition = response.content_disposition
    return Fetched(
        final_url=str(response.url),
        size=size,
        sha256=sha256,
        content_type=response.content_type if "Content-Type" in response.headers else None,
        disposition_name=disposition.filename if disposition else None,
        resumed_from=kept,
    )


def _continues(response: aiohttp.ClientResponse, offset: int) -> bool:
    """Whether `response` is the rest of the resource from `offset`, not a fresh body."""
    got = segments_.content_range(response) if response.status == 206 else None
    return got is not None and got[0] == offset


def _total_size(response: aiohttp.ClientResponse) -> int | None:
    if response.status == 206:
        got = segments_.content_range(response)
        return got[2] if got else None
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
