"""Live progress: a job's recorded events as a Server-Sent Events stream, resumable by event id.

The stream polls the job's log (executions.queries.job_events), so every gateway replica can
serve any client, and a client that reconnects with Last-Event-ID gets exactly what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING

import msgspec
from litestar.response import ServerSentEventMessage

from services.gateway.errors import InvalidRequest
from services.gateway.executions.queries import job_events, seconds_since_job_ended
from shared.postgres import DATABASE_DOWN

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar.datastructures import State

    from shared.ids import JobId

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.3
HEARTBEAT_S = 15.0
# A job that ended this long ago without a job.finished in its log (it ended before the log
# existed) will not get one: the stream ends after what there is.
_END_GRACE_S = 10.0
_STATUS_CHECK_S = 1.0
# What EventSource waits before reconnecting, in milliseconds.
RETRY_MS = 2000
_FINISHED = "job.finished"
_DRAINING_KEY = "downlink.live.draining"
# Event ids are PostgreSQL bigints: anything larger would fail the query after the 200 is sent.
MAX_EVENT_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")


def draining(state: State) -> asyncio.Event:
    """Set once the gateway begins to shut down: open streams end rather than hold it up.

    Their clients reconnect (to another replica, or after the restart) with Last-Event-ID.
    """
    event = state.get(_DRAINING_KEY)
    if not isinstance(event, asyncio.Event):
        event = asyncio.Event()
        state[_DRAINING_KEY] = event
    return event


async def job_event_stream(
    pool: asyncpg.Pool,
    job_id: JobId,
    *,
    after_id: int = 0,
    poll_interval_s: float = POLL_INTERVAL_S,
    heartbeat_s: float = HEARTBEAT_S,
    stopping: asyncio.Event | None = None,
) -> AsyncIterator[ServerSentEventMessage]:
    """The job's events after `after_id`, in order, until its job.finished has been sent.

    Quiet stretches carry a comment every `heartbeat_s`, so proxies keep the connection open;
    `stopping` ends the stream early (a shutdown).
    """
    stopping = stopping or asyncio.Event()
    yield ServerSentEventMessage(comment=f"events of job {job_id}", retry=RETRY_MS, data=None)
    last_sent = time.monotonic()
    next_status_check = 0.0
    while not stopping.is_set():
        try:
            rows = await job_events(pool, job_id, after_id=after_id)
        except DATABASE_DOWN as exc:
            # The client reconnects with its Last-Event-ID; nothing is lost by ending here.
            log.warning("event stream of job %s ends: PostgreSQL unavailable: %s", job_id, exc)
            return
        for row in rows:
            after_id = row.id
            yield ServerSentEventMessage(
                id=row.id, event=row.type, data=msgspec.json.encode(row.payload).decode()
            )
            last_sent = time.monotonic()
            if row.type == _FINISHED:
                return
        if rows:
            continue  # there may be more right behind them
        now = time.monotonic()
        if now >= next_status_check:
            next_status_check = now + _STATUS_CHECK_S
            ended_s = await seconds_since_job_ended(pool, job_id)
            if ended_s is not None and ended_s > _END_GRACE_S:
                return
        if now - last_sent >= heartbeat_s:
            yield ServerSentEventMessage(comment="keep-alive", data=None)
            last_sent = now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), poll_interval_s)


def parse_last_event_id(value: str | None) -> int | None:
    """The event id a client resumes after; None when absent (or empty, as EventSource may send).

    Raises InvalidRequest naming the header for anything but a whole number up to MAX_EVENT_ID,
    before the stream's 200 has been sent.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not _DIGITS.fullmatch(text) or int(text) > MAX_EVENT_ID:
        raise InvalidRequest(
            f"Last-Event-ID: {value!r} is not an event id (a whole number 0 to {MAX_EVENT_ID})"
        )
    return int(text)
