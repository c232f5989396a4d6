"""Segmented downloads: one big file as several byte ranges fetched in parallel into one part.

Every segment records in the part's meta how far it got, so after a crash each one resumes
where it stopped; the first segment runs on the file's own host slot, each other one on a slot
of its own, so segments and whole files share one per-host budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from services.downloader.blocks import BlockWriter, RateMeter, read_block, through_cancel
from shared.errors import TransientError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import aiohttp

    from services.downloader.limits import HostLimits
    from shared.storage import PartWriter

    Opener = Callable[[dict[str, str]], Awaitable[aiohttp.ClientResponse]]
    ProgressCallback = Callable[[int, int | None, float], Awaitable[None]]

_MIB = 1 << 20
_HASH_READ_BYTES = _MIB
# Smaller blocks than a single stream's, since every segment holds about three at once; a
# segment pays off on a capped connection, where a few more hops a second cost nothing.
_SEGMENT_BLOCK_BYTES = _MIB // 2
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def content_range(response: aiohttp.ClientResponse) -> tuple[int, int, int | None] | None:
    """A 206's Content-Range as (start, end exclusive, total or None when unknown)."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)) + 1, total


@dataclass(slots=True)
class Segment:
    """Bytes `start` to `end` (exclusive) of the file; those before `done` are in the part."""

    start: int
    end: int
    done: int

    @property
    def left(self) -> int:
        return self.end - self.done


def split(size: int, count: int) -> list[Segment]:
    """At most `count` near-equal segments covering `size` bytes, cut on MiB boundaries."""
    cuts = {round(size * i / count / _MIB) * _MIB for i in range(1, count)}
    bounds = [0, *sorted(c for c in cuts if 0 < c < size), size]
    return [Segment(start, end, start) for start, end in itertools.pairwise(bounds)]


def encode(segments: list[Segment]) -> str:
    """The segments as the part's meta keeps them: `start-end-done,...`."""
    return ",".join(f"{s.start}-{s.end}-{s.done}" for s in segments)


def decode(text: str, size: int) -> list[Segment] | None:
    """The segments `encode` wrote, or None unless they tile `size` bytes exactly."""
    try:
        segments = [Segment(*(int(n) for n in item.split("-"))) for item in text.split(",")]
    except (TypeError, ValueError):
        return None
    position = 0
    for segment in segments:
        if segment.start != position or not segment.start <= segment.done <= segment.end:
            return None
        position = segment.end
    return segments if position == size and size > 0 else None


def worth_splitting(response: aiohttp.ClientResponse, *, threshold_bytes: int, count: int) -> bool:
    """Whether the server, in its first answer, offers ranges of a body big enough to split."""
    return (
        count > 1
        and response.status == 200
        and response.headers.get("Accept-Ranges", "").strip().lower() == "bytes"
        and (response.content_length or 0) >= threshold_bytes
    )


@dataclass(frozen=True, slots=True)
class Source:
    """The resource the segments come from, and the slots they draw on."""

    url: str
    validator: str
    total: int
    open_range: Opener  # opens `url` with the given headers, guard and redirects applied
    slots: HostLimits
    host: str


class SegmentedFetch:
    """Fills `segments` of `part` from `source` in parallel, then hashes the whole part."""

    def __init__(
        self,
        part: PartWriter,
        segments: list[Segment],
        source: Source,
        *,
        meta: dict[str, str],
        progress_interval_s: float,
        on_progress: ProgressCallback,
    ) -> None:
        self._part, self._segments, self._source = part, segments, source
        self._meta = meta
        self._interval_s = progress_interval_s
        self._on_progress = on_progress
        self._pending = deque(s for s in segments if s.left)
        self.kept = sum(s.done - s.start for s in segments)
        self._received = self.kept
        self._meter = RateMeter()
        self._next_report = time.monotonic() + progress_interval_s
        self._waiting: set[asyncio.Task[None]] = set()

    async def run(self, first: aiohttp.ClientResponse) -> str:
        """Fetch every unfinished segment, the first through `first` (a response that starts
        at that segment's `done`); the SHA-256 of the whole file on return."""
        # Not a TaskGroup: on 3.11 a child failing late leaves the caller marked cancelled.
        tasks = [asyncio.create_task(self._work(first, self._take()))]
        self._waiting = {asyncio.create_task(self._helper()) for _ in self._pending}
        tasks += self._waiting
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            try:
                await _settle(tasks)
            finally:
                await self.save()
        if any(s.left for s in self._segments):
            raise TransientError(f"{self._source.url}: segments ended unfinished")
        return await through_cancel(asyncio.ensure_future(asyncio.to_thread(self._sha256)))

    async def save(self) -> None:
        """Record how far each segment got; only bytes already on disk count, so a power loss
        cannot leave a record of bytes that never reached it."""
        await self._part.save_meta(
            {**self._meta, "segments": encode(self._segments)}, after_data=True
        )

    def _take(self) -> Segment | None:
        if not self._pending:
            return None
        segment = self._pending.popleft()
        if not self._pending:
            for helper in self._waiting:
                helper.cancel()  # nothing left to fetch: stop waiting for a slot
        return segment

    async def _helper(self) -> None:
        task = asyncio.current_task()
        async with self._source.slots.slot(self._source.host):
            self._waiting.discard(task)
            await self._work(None, self._take())

    async def _work(self, response: aiohttp.ClientResponse | None, segment: Segment | None) -> None:
        while segment is not None:
            if response is None:
                response = await self._open(segment)
            try:
                await self._pump(response, segment)
            finally:
                # A body read only up to its segment's end must not be drained into the pool.
                if response.content.at_eof():
                    response.release()
                else:
                    response.close()
            response, segment = None, self._take()

    async def _open(self, segment: Segment) -> aiohttp.ClientResponse:
        source = self._source
        response = await source.open_range(
            {"Range": f"bytes={segment.done}-{segment.end - 1}", "If-Range": source.validator}
        )
        if response.status != 206 or content_range(response) != (
            segment.done,
            segment.end,
            source.total,
        ):
            response.close()
            raise TransientError(f"{source.url} changed or stopped serving ranges mid-download")
        return response

    async def _pump(self, response: aiohttp.ClientResponse, segment: Segment) -> None:
        writer = BlockWriter(partial(self._write, segment))
        position = segment.done
        try:
            while position < segment.end:
                wanted = min(segment.end - position, _SEGMENT_BLOCK_BYTES)
                block = await read_block(response.content, self._next_report, wanted)
                if not block:
                    raise TransientError(
                        f"{self._source.url} ended at byte {position} of a segment ending at "
                        f"{segment.end}"
                    )
                position += len(block)
                await writer.put(block)
                self._received += len(block)
                self._meter.add(len(block))
                await self._maybe_report()
        finally:
            await writer.settle()

    def _write(self, segment: Segment, block: bytes) -> None:
        self._part.write_at(segment.done, block)
        segment.done += len(block)

    async def _maybe_report(self) -> None:
        if time.monotonic() < self._next_report:
            return
        self._next_report = time.monotonic() + self._interval_s
        await self.save()
        await self._on_progress(self._received, self._source.total, self._meter.rate_bps())

    def _sha256(self) -> str:
        # After the download, from the page cache; hashlib releases the GIL meanwhile.
        digest = hashlib.sha256()
        for offset in range(0, self._source.total, _HASH_READ_BYTES):
            digest.update(self._part.read_at(offset, _HASH_READ_BYTES))
        return digest.hexdigest()


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel what still runs and wait for all of it, through a cancel of our own too (their
    writer threads must be done before the part closes); then raise the first real error."""
    for task in tasks:
        task.cancel()
    cancelled = False
    while not all(task.done() for task in tasks):
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
