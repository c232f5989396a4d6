"""Leases and reclaim on Redis Streams: what keeps a slow entry ours and a dead worker's not lost.

XCLAIM ... JUSTID renews the lease on entries being worked on (resets their idle time without
counting a delivery); XAUTOCLAIM takes over entries idle past the threshold, with their delivery
count from XPENDING; consumers gone for good are forgotten once nothing is pending on them.
Outcomes (ack, retry, dead letter) stay with shared.consumer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Claimed:
    """An idle entry this consumer took over.

    Attributes:
        stream: the stream it is on.
        entry_id: its Redis entry id.
        fields: its fields (the frame under `__data__`).
        delivery_count: how often it was delivered, this time included.
    """

    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    delivery_count: int


@dataclass(frozen=True, slots=True)
class Reclaimer:
    """Leases and reclaim for `consumer` of `group` on `streams`."""

    redis: Redis
    streams: Sequence[str]
    group: str
    consumer: str
    claim_idle_s: float

    @property
    def interval_s(self) -> float:
        """How often to sweep: a few times per idle threshold, within 0.5-5 s."""
        return max(0.5, min(5.0, self.claim_idle_s / 4))

    async def renew(self, entries: Iterable[tuple[str, str]]) -> None:
        """Renew the lease on each (stream, entry id) this consumer is working on."""
        by_stream: dict[str, list[int | bytes | str | memoryview[int]]] = {}
        for stream, entry_id in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            # JUSTID resets the idle time without counting a delivery.
            await self.redis.xclaim(stream, self.group, self.consumer, 0, ids, justid=True)

    async def claim_idle(self, stream: str) -> tuple[Claimed | None, list[str]]:
        """Take over one entry of `stream` idle past the threshold, if any.

        Also returns the ids XAUTOCLAIM found pending but deleted from the stream, for the
        consumer to acknowledge: there is nothing left of them to run.
        """
        min_idle_ms = int(self.claim_idle_s * 1000)
        _next, claimed, deleted = await self.redis.xautoclaim(
            stream, self.group, self.consumer, min_idle_ms, "0-0", count=1
        )
        gone = [_text(entry_id) for entry_id in deleted]
        entries = [(entry_id, data) for entry_id, data in claimed if data]
        if not entries:
            return None, gone
        entry_id, fields = entries[0]
        entry_id_str = _text(entry_id)
        count = await self.delivery_count(stream, entry_id_str)
        return Claimed(stream, entry_id_str, fields, count), gone

    async def delivery_count(self, stream: str, entry_id: str) -> int:
        """How often `entry_id` was delivered, from the pending-entries list (1 if not pending)."""
        pending = await self.redis.xpending_range(stream, self.group, entry_id, entry_id, 1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def forget_dead_consumers(self) -> None:
        """Delete other consumers idle for twice the threshold with nothing pending."""
        idle_limit_ms = int(self.claim_idle_s * 2000)
        for stream in self.streams:
            for info in await self.redis.xinfo_consumers(stream, self.group):
                name = _text(info["name"])
                if name != self.consumer and info["pending"] == 0 and info["idle"] > idle_limit_ms:
                    await self.redis.xgroup_delconsumer(stream, self.group, name)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
