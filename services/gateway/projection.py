"""The parts of one projection step, for the areas to fill in and the tracker to run.

Each area (jobs, processing, exports) describes how an event type reaches PostgreSQL as a
`Projector` in its own `PROJECTORS` table; the tracker assembles the tables and runs every
event through one template: claim the event, lock its subject, apply, settle the job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import asyncpg

    from shared.ids import JobId
    from shared.statuses import JobStatus


class Locked(NamedTuple):
    """The row a projection locked before applying: the event's job, settled afterwards, or
    (job None) another subject such as an export."""

    job_id: JobId | None = None
    job_status: JobStatus | None = None


# (connection, event) -> True when a file or a piece of processing of the job reached its end,
# so the job itself may end now (the template then settles it).
Apply = Callable[["asyncpg.Connection", Any], Awaitable[bool]]
# (connection, event) -> the subject locked for the rest of the transaction, or None when the
# event names nothing on record (the event then changes nothing).
Lock = Callable[["asyncpg.Connection", Any], Awaitable[Locked | None]]


@dataclass(frozen=True, slots=True)
class Projector:
    """How the tracker applies one event type.

    Attributes:
        apply: the forward-only UPDATEs of the event (replayed or late, it changes nothing).
        lock: locks the event's subject first: locking the job serialises the events of one
            job and takes the locks in cancellation's order (job, then files).
        claimed: whether the event's id is recorded in `processed_events`; False for progress,
            which is idempotent by itself and far too frequent to keep a row per event.
        writes_outbox: whether applying it may queue outgoing rows (a job's end, processing
            commands), so the relay should be woken.
    """

    apply: Apply
    lock: Lock
    claimed: bool = True
    writes_outbox: bool = False


async def claim_event(connection: asyncpg.Connection, event_id: str) -> bool:
    """Record `event_id` as processed; False when it already was (a replay)."""
    inserted = await connection.fetchval(
        "INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
        event_id,
    )
    return bool(inserted)
