"""A response body in big blocks: reading them, writing them off the event loop, the rate."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import aiohttp

T = TypeVar("T")

# Bodies are hashed and written in blocks this big, so each hop to a writer thread carries
# enough work to be worth it; about three are held per stream (buffer, block, block written).
# (4 MiB ran 1 GiB from loopback faster, but held ~16 MiB more: RSS matters more here.)
BLOCK_BYTES = 1 << 20


async def read_block(
    content: aiohttp.StreamReader, report_at: float, limit: int = BLOCK_BYTES
) -> bytes:
    """The next `limit` (at most BLOCK_BYTES) bytes of the body, fewer at its end or once a
    progress report is due (a slow link still reports); empty at the end."""
    pieces: list[bytes] = []
    wanted = min(limit, BLOCK_BYTES)
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


async def through_cancel(future: asyncio.Future[T]) -> T:
    """Wait for a worker thread's `future` even through a cancel, then re-raise the cancel:
    whatever it touches (a part about to be closed) must outlive it."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


class BlockWriter:
    """Hands blocks to `sink` in a worker thread, one block while the next is read, so the
    network, the hash and the disk overlap; hashlib and file writes release the GIL."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._pending: asyncio.Future[None] | None = None

    async def put(self, block: bytes, *, inline: bool = False) -> None:
        """Take `block` once the one before is written; `inline` (a small body's last block)
        skips the thread hop, which would cost a small file more than its hash."""
        await self.settle()
        if inline:
            self._sink(block)
        else:
            self._pending = asyncio.ensure_future(asyncio.to_thread(self._sink, block))

    async def settle(self) -> None:
        """Wait for the block in flight, through a cancel too (see `through_cancel`)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await through_cancel(pending)


class RateMeter:
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
