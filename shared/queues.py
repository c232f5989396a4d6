"""The state of the streams: length, pending, lag and oldest pending age per group, dead letters.

Read straight from Redis (XLEN, XINFO GROUPS, XPENDING), for GET /api/v1/queues and the
Prometheus gauges of every service.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import ResponseError

from shared.streams import DEAD_STREAM, DELAYED_KEY

if TYPE_CHECKING:
    from redis.asyncio import Redis


class GroupStats(msgspec.Struct, frozen=True, kw_only=True):
    """One consumer group on one stream.

    Attributes:
        stream: the stream.
        group: the consumer group reading it.
        length: entries in the stream (read or not; trimming keeps it bounded).
        pending: entries delivered to the group and not acknowledged yet (work in flight).
        lag: entries the group has not read yet (its backlog); None when Redis cannot tell.
        consumers: consumers the group knows (dead ones linger until their pending is 0).
        oldest_pending_s: age in seconds of the oldest pending entry, None when none is pending.
    """

    stream: str
    group: str
    length: int
    pending: int
    lag: int | None
    consumers: int
    oldest_pending_s: float | None = None


class QueueReport(msgspec.Struct, frozen=True, kw_only=True):
    """Every watched stream and group, the dead letters and the retries waiting for their time.

    Attributes:
        queues: one row per stream and group, in the order the groups were given.
        dead_letters: entries on the dead-letter stream.
        delayed_retries: failed entries waiting for their backoff before they are queued again.
    """

    queues: list[GroupStats]
    dead_letters: int
    delayed_retries: int


async def queue_report(redis: Redis, groups: Mapping[str, Sequence[str]]) -> QueueReport:
    """Stats of every group on the streams of `groups` (group -> streams it reads).

    Groups found on those streams but not named (another deployment's, a test's) are reported
    too; a named group or stream that does not exist yet is reported empty.
    """
    streams = list(dict.fromkeys(s for names in groups.values() for s in names))
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
        pipe.xlen(DEAD_STREAM)
        pipe.zcard(DELAYED_KEY)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    *per_stream, dead, delayed = replies
    rows: list[GroupStats] = []
    now_s = time.time()
    for index, stream in enumerate(streams):
        length, infos = per_stream[2 * index], per_stream[2 * index + 1]
        length = 0 if isinstance(length, Exception) else int(length)
        if isinstance(infos, ResponseError):
            infos = []  # "no such key": the stream was never written to
        elif isinstance(infos, Exception):
            raise infos
        found = {_text(info["name"]): info for info in infos}
        wanted = [g for g, names in groups.items() if stream in names]
        for group in [*wanted, *sorted(found.keys() - set(wanted))]:
            info = found.get(group)
            if info is None:
                # Not created yet: everything on the stream is still ahead of it.
                rows.append(
                    GroupStats(
                        stream=stream,
                        group=group,
                        length=length,
                        pending=0,
                        lag=length,
                        consumers=0,
                    )
                )
                continue
            pending = int(info["pending"])
            rows.append(
                GroupStats(
                    stream=stream,
                    group=group,
                    length=length,
                    pending=pending,
                    lag=None if info.get("lag") is None else int(info["lag"]),
                    consumers=int(info["consumers"]),
                    oldest_pending_s=(
                        await _oldest_pending_s(redis, stream, group, now_s) if pending else None
                    ),
                )
            )
    return QueueReport(
        queues=rows,
        dead_letters=0 if isinstance(dead, Exception) else int(dead),
        delayed_retries=0 if isinstance(delayed, Exception) else int(delayed),
    )


async def _oldest_pending_s(redis: Redis, stream: str, group: str, now_s: float) -> float | None:
    # An entry id starts with the millisecond it was added: the oldest pending id tells how long
    # the oldest unfinished message has been waiting, however often it was delivered.
    summary = await redis.xpending(stream, group)
    oldest = summary.get("min") if summary else None
    if not oldest:
        return None
    millis = int(_text(oldest).split("-", 1)[0])
    return max(0.0, round(now_s - millis / 1000, 3))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
