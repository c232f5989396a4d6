"""Server-Sent Events streams that poll PostgreSQL, so every gateway replica serves any client.

A `Feed` says what one stream reads (a job's log, a task's state); `polled_stream` runs the
loop every stream shares: events in order, a keep-alive comment in quiet stretches, an end on
the feed's last event, on shutdown, or on a PostgreSQL outage (the client reconnects with
Last-Event-ID and loses nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import msgspec
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEventMessage

from services.gateway.errors import InvalidRequest
from shared.postgres import DATABASE_DOWN

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from litestar.datastructures import State

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.3
HEARTBEAT_S = 15.0
# How often a quiet stream asks its feed whether it ended without a last event.
ENDED_CHECK_S = 1.0
# What EventSource waits before reconnecting, in milliseconds.
RETRY_MS = 2000
_DRAINING_KEY = "downlink.live.draining"
# Event ids are PostgreSQL bigints: anything larger would fail the query after the 200 is sent.
MAX_EVENT_ID = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}")

# A stream handler's resume parameters; `resume_after` reads them.
LastEventIdHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        description=(
            f"resume after this event id, 0 to {MAX_EVENT_ID} (EventSource sends it on "
            "reconnect); anything else answers 400"
        ),
    ),
]
AfterQuery = Annotated[
    int | None,
    QueryParameter(
        ge=0,
        le=MAX_EVENT_ID,
        description="resume after this event id (for clients without headers); Last-Event-ID wins",
    ),
]


class LiveEvent(Protocol):
    """One event of a feed: its id (the SSE id, increasing), its type and its JSON payload."""

    @property
    def id(self) -> int: ...

    @property
    def type(self) -> str: ...

    @property
    def payload(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Feed:
    """What one stream polls.

    Attributes:
        name: what the opening comment and the logs call it ("job 1f2e...").
        read: the events with an id above the one given, in order (empty when none yet).
        last_type: the event type after which the stream ends.
        ended: whether the subject ended without a last event to come (asked while quiet),
            or None when the last event always comes.
    """

    name: str
    read: Callable[[int], Awaitable[Sequence[LiveEvent]]]
    last_type: str
    ended: Callable[[], Awaitable[bool]] | None = None


def draining(state: State) -> asyncio.Event:
    """Set once the gateway begins to shut down: open streams end rather than hold it up.

    Their clients reconnect (to another replica, or after the restart) with Last-Event-ID.
    """
    event = state.get(_DRAINING_KEY)
    if not isinstance(event, asyncio.Event):
        event = asyncio.Event()
        state[_DRAINING_KEY] = event
    return event


async def polled_stream(
    feed: Feed,
    *,
    after_id: int = 0,
    poll_interval_s: float = POLL_INTERVAL_S,
    heartbeat_s: float = HEARTBEAT_S,
    stopping: asyncio.Event | None = None,
) -> AsyncIterator[ServerSentEventMessage]:
    """The feed's events after `after_id`, in order, until its last one has been sent.

    Quiet stretches carry a comment every `heartbeat_s`, so proxies keep the connection open;
    `stopping` ends the stream early (a shutdown).
    """
    stopping = stopping or asyncio.Event()
    yield ServerSentEventMessage(comment=f"events of {feed.name}", retry=RETRY_MS, data=None)
    last_sent = time.monotonic()
    next_ended_check = 0.0
    while not stopping.is_set():
        try:
            events = await feed.read(after_id)
        except DATABASE_DOWN as exc:
            # The client reconnects with its Last-Event-ID; nothing is lost by ending here.
            log.warning("event stream of %s ends: PostgreSQL unavailable: %s", feed.name, exc)
            return
        for event in events:
            after_id = event.id
            yield ServerSentEventMessage(
                id=event.id, event=event.type, data=msgspec.json.encode(event.payload).decode()
            )
            last_sent = time.monotonic()
            if event.type == feed.last_type:
                return
        if events:
            continue  # there may be more right behind them
        now = time.monotonic()
        if feed.ended is not None and now >= next_ended_check:
            next_ended_check = now + ENDED_CHECK_S
            if await feed.ended():
                return
        if now - last_sent >= heartbeat_s:
            yield ServerSentEventMessage(comment="keep-alive", data=None)
            last_sent = now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), poll_interval_s)


def resume_after(last_event_id: str | None, after: int | None) -> int:
    """The event id a stream resumes after: the header's, else the query's, else 0."""
    resume = parse_last_event_id(last_event_id)
    return resume if resume is not None else after or 0


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
