"""Keeping streams bounded without ever dropping an entry some consumer group still needs.

Redis 7.0 has no `XTRIM ... ACKED`, so the safe cut is computed here: per group the oldest
entry still pending, or, with nothing pending, the first entry it has not read yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from shared.streams import DEAD_STREAM

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Dead letters are read by people, not consumed by groups: keep the newest this many.
DEAD_LETTERS_MAX = 100_000


async def trim_stream(redis: Redis, stream: str) -> int:
    """Remove the entries every group of `stream` has read and acknowledged; returns how many.

    A stream without groups is left alone: nobody has said which entries are done with.
    """
    cut = await safe_min_id(redis, stream)
    if cut is None:
        return 0
    # Exact MINID, not `~` (redis-py's default): the cut is already the most that may go, and
    # an approximate trim keeps whole radix-tree nodes, so small streams would never shrink.
    removed: int = await redis.xtrim(stream, minid=cut, approximate=False)
    return removed


async def safe_min_id(redis: Redis, stream: str) -> str | None:
    """The smallest id any group of `stream` may still need, or None without groups."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    cuts: list[tuple[int, int]] = []
    for group in groups:
        if int(group["pending"]) > 0:
            summary = await redis.xpending(stream, group["name"])
            # Acked between XINFO and XPENDING: then everything it read is done.
            if summary["pending"] and summary["min"] is not None:
                cuts.append(_parse_id(summary["min"]))
                continue
        cuts.append(_successor(_parse_id(group["last-delivered-id"])))
    if not cuts:
        return None
    ms, seq = min(cuts)
    return f"{ms}-{seq}"


async def cap_dead_letters(redis: Redis, max_len: int = DEAD_LETTERS_MAX) -> int:
    """Keep about the newest `max_len` dead letters (approximate: whole nodes go, cheaply)."""
    removed: int = await redis.xtrim(DEAD_STREAM, maxlen=max_len, approximate=True)
    return removed


def _parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _successor(entry_id: tuple[int, int]) -> tuple[int, int]:
    # Entries after the last delivered one are unread by this group: the cut may not pass it.
    ms, seq = entry_id
    if seq == 2**64 - 1:
        return ms + 1, 0
    return ms, seq + 1
