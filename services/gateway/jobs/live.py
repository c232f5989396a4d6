"""Live progress: a job's recorded events as a Server-Sent Events stream, resumable by event id.

The stream polls the job's log (executions.queries.job_events) through services.gateway.live,
so every gateway replica can serve any client, and a client that reconnects with Last-Event-ID
gets exactly what it missed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.executions.queries import job_events, seconds_since_job_ended
from services.gateway.live import (
    HEARTBEAT_S,
    POLL_INTERVAL_S,
    Feed,
    parse_last_event_id,
    polled_stream,
)

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator, Sequence

    import asyncpg
    from litestar.response import ServerSentEventMessage

    from services.gateway.live import LiveEvent
    from shared.ids import JobId

# parse_last_event_id stays importable from here, where it was first.
__all__ = ["job_event_stream", "parse_last_event_id"]

# A job that ended this long ago without a job.finished in its log (it ended before the log
# existed) will not get one: the stream ends after what there is.
_END_GRACE_S = 10.0
_FINISHED = "job.finished"


def job_event_stream(
    pool: asyncpg.Pool,
    job_id: JobId,
    *,
    after_id: int = 0,
    poll_interval_s: float = POLL_INTERVAL_S,
    heartbeat_s: float = HEARTBEAT_S,
    stopping: asyncio.Event | None = None,
) -> AsyncIterator[ServerSentEventMessage]:
    """The job's events after `after_id`, in order, until its job.finished has been sent."""

    async def read(after: int) -> Sequence[LiveEvent]:
        return await job_events(pool, job_id, after_id=after)

    async def ended() -> bool:
        ended_s = await seconds_since_job_ended(pool, job_id)
        return ended_s is not None and ended_s > _END_GRACE_S

    return polled_stream(
        Feed(name=f"job {job_id}", read=read, last_type=_FINISHED, ended=ended),
        after_id=after_id,
        poll_interval_s=poll_interval_s,
        heartbeat_s=heartbeat_s,
        stopping=stopping,
    )
