"""Coalescing of many small Redis writes into few round trips, for acks and events.

Sixteen downloads finishing together would otherwise pay sixteen XADDs and sixteen XACKs, one
round trip each (~60 µs of client CPU apiece; ~13 µs in a pipeline). Each caller still waits
for its own write to be on the server before it goes on, so ordering guarantees (an event
published before its command is acknowledged) are unchanged.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

Item = TypeVar("Item")
Result = TypeVar("Result")


class RoundTrips(Generic[Item, Result]):
    """Sends items in batches: those arriving while one batch is out go in the next.

    An idle sender sends at once (no timer, no added latency); under load a batch holds
    whatever queued during the previous round trip. `send` answers one result per item.
    """

    def __init__(self, send: Callable[[list[Item]], Awaitable[Sequence[Result]]]) -> None:
        self._send = send
        self._queued: list[tuple[Item, asyncio.Future[Result]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Queue `item`; its result once the batch holding it was sent (or its error)."""
        sent: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queued.append((item, sent))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_queued())
        return await sent

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    results = await self._send([item for item, _ in batch])
                except Exception as exc:
                    for _, sent in batch:
                        if not sent.done():  # its caller was cancelled meanwhile
                            sent.set_exception(exc)
                    continue
                for (_, sent), result in zip(batch, results, strict=True):
                    if not sent.done():
                        sent.set_result(result)
        finally:
            self._sender = None
