"""Streaming one URL into a storage part with aiohttp: redirects, limits, hashing, progress."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

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


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a completed fetch produced."""

    final_url: str
    size: int
    sha256: str
    content_type: str | None
    disposition_name: str | None


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """Per-request bounds."""

    max_size_bytes: int
    max_redirects: int
    progress_interval_s: float


async def fetch_into(
    session: aiohttp.ClientSession,
    url: str,
    part: PartWriter,
    *,
    guard: AddressGuard,
    limits: FetchLimits,
    on_progress: ProgressCallback,
) -> Fetched:
    """Stream `url` into `part`, hashing as it writes; the part holds the whole body on return."""
    with map_errors(url):
        async with await _open(session, url, guard, limits.max_redirects) as response:
            total = response.content_length
            if total is not None and total > limits.max_size_bytes:
                raise TooLarge(f"{url} is {total} bytes, over the limit of {limits.max_size_bytes}")
            await part.truncate()
            digest = hashlib.sha256()
            meter = _RateMeter()
            next_report = time.monotonic() + limits.progress_interval_s
            async for chunk in response.content.iter_any():
                part.write(chunk)
                digest.update(chunk)
                meter.add(len(chunk))
                if part.size > limits.max_size_bytes:
                    raise TooLarge(f"{url} is over the limit of {limits.max_size_bytes} bytes")
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + limits.progress_interval_s
                    await on_progress(part.size, total, meter.rate_bps())
            if total is not None and part.size != total:
                raise TransientError(f"{url} ended after {part.size} of {total} bytes")
            disposition = response.content_disposition
            return Fetched(
                final_url=str(response.url),
                size=part.size,
                sha256=digest.hexdigest(),
                content_type=response.content_type if "Content-Type" in response.headers else None,
                disposition_name=disposition.filename if disposition else None,
            )


async def _open(
    session: aiohttp.ClientSession, url: str, guard: AddressGuard, max_redirects: int
) -> aiohttp.ClientResponse:
    # Redirects are followed here, not by aiohttp, so every hop's scheme and host are checked.
    for _hop in range(max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            raise PermanentError(f"refusing to fetch {url!r}: only http(s) URLs with a host")
        guard.check_host(parts.hostname)
        response = await session.get(
            url, allow_redirects=False, headers={"Accept-Encoding": "identity"}
        )
        if response.status in _REDIRECTS and "Location" in response.headers:
            response.release()
            url = urljoin(url, response.headers["Location"])
            continue
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
