"""The parts of one projection step, for the areas to fill in and the tracker to run.

Each area (jobs, processing, exports) describes how an event type reaches PostgreSQL as a
`Projector` in its own `PROJECTORS` table; the tracker assembles the tables and runs every batch
of events through one template: claim the events, lock their jobs, apply, settle the jobs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

    from shared.ids import JobId


# (connection, events of one type, at most one per subject) -> the jobs in which a file or a
# piece of processing reached its end, so the job itself may end now (the template settles it).
Apply = Callable[["asyncpg.Connection", Sequence[Any]], Awaitable[Collection["JobId"]]]
# (connection, event) -> True when a file or a piece of processing of the job reached its end.
ApplyOne = Callable[["asyncpg.Connection", Any], Awaitable[bool]]
# (connection, event) -> whether the event's subject is on record, locked for the rest of the
# transaction (an event naming nothing on record changes nothing).
Lock = Callable[["asyncpg.Connection", Any], Awaitable[bool]]
# (connection, a batch's events of the types that share it) -> the ids of those whose subject
# is on record, every subject locked in one statement, in id order, for the rest of the
# transaction.
LockAll = Callable[["asyncpg.Connection", Sequence[Any]], Awaitable[Collection[str]]]


@dataclass(frozen=True, slots=True)
class Projector:
    """How the tracker applies one event type.

    Attributes:
        apply: the forward-only UPDATEs of a list of events (replayed or late, one changes
            nothing), as few statements as the rule allows: `one_by_one` where it does not batch.
        lock: locks an event's subject first; None (events of a job) when the template's lock of
            the batch's jobs serves: locking the job serialises the events of one job and takes
            the locks in cancellation's order (job, then files).
        lock_all: locks the subjects of a whole batch at once, before its first wave, for the
            event types that share it: one statement instead of one per event, and the rows in
            id order, so two trackers locking overlapping sets cannot deadlock. `lock` then
            serves only the events whose subject it did not find (one queued earlier in the
            batch).
        claimed: whether the event's id is recorded in `processed_events`; False for progress,
            which is idempotent by itself and far too frequent to keep a row per event.
        writes_outbox: whether applying it may queue outgoing rows (a job's end, processing
            commands), so the relay should be woken.
    """

    apply: Apply
    lock: Lock | None = None
    lock_all: LockAll | None = None
    claimed: bool = True
    writes_outbox: bool = False


def one_by_one(apply: ApplyOne) -> Apply:
    """A rule that does not batch cheaply, applied to each event in turn."""

    async def apply_each(connection: asyncpg.Connection, events: Sequence[Any]) -> set[JobId]:
        return {event.job_id for event in events if await apply(connection, event)}

    return apply_each


async def claim_events(connection: asyncpg.Connection, event_ids: Sequence[str]) -> set[str]:
    """Record `event_ids` as processed in one statement; the ids that were not yet (not replays)."""
    if not event_ids:
        return set()
    rows = await connection.fetch(
        "INSERT INTO processed_events (event_id) SELECT unnest($1::uuid[])"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        list(event_ids),
    )
    return {str(row["event_id"]) for row in rows}
