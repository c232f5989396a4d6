"""Bulk actions on dead letters: re-drive or discard the letters a selection names.

A selection is explicit ids or a filter (the listing's). Each letter is re-driven exactly as
the single retry does it, so the same letter is re-driven once: its work is reopened on the
record in a transaction that refuses work already queued again (409), and a letter gone from
the stream answers 404. Those refusals are reported per letter; the others still go ahead.
Discarding removes letters and logs what each held; the job or task stays as it ended.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import msgspec

from services.gateway.dead_letters import letters
from services.gateway.dead_letters.filters import LetterFilter, matching, scan
from services.gateway.dead_letters.letters import Redriven
from services.gateway.errors import CannotRedrive, InvalidRequest, NotFound
from shared.streams import DEAD_STREAM

if TYPE_CHECKING:
    from collections.abc import Callable, Set

    import asyncpg
    from faststream.redis import RedisBroker
    from redis.asyncio import Redis

    from services.gateway.auth import User
    from services.gateway.dead_letters.letters import StoredLetter

log = logging.getLogger(__name__)

MAX_IDS = 1000
MAX_LIMIT = 10_000
LetterId = Annotated[str, msgspec.Meta(pattern=r"^\d{1,20}-\d{1,20}$")]


class LetterSelection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Either `ids` or `filter` (`{}` selects every letter); at most `limit` are acted on,
    oldest first, and the answer says how many matching letters remain."""

    ids: Annotated[list[LetterId], msgspec.Meta(min_length=1, max_length=MAX_IDS)] | None = None
    filter: LetterFilter | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = 1000

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.filter is None):
            raise InvalidRequest("ids, filter: give exactly one of them")


class Skipped(msgspec.Struct, frozen=True, kw_only=True):
    """A selected letter left alone: 404 when it is gone, 409 when its work may not run."""

    id: str
    status_code: int
    reason: str


class BulkOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a bulk action did: `matched` letters were selected, `remaining` of them were past
    the limit (left for another call), the others were acted on or skipped."""

    matched: int
    redriven: list[Redriven] = []
    discarded: list[str] = []
    skipped: list[Skipped] = []
    remaining: int = 0


async def retry_many(
    selection: LetterSelection,
    *,
    redis: Redis,
    broker: RedisBroker,
    pool: asyncpg.Pool,
    on_outbox_written: Callable[[], None],
) -> BulkOutcome:
    """Re-drive each selected letter as POST /dead-letters/{id}/retry would."""
    chosen, missing, remaining = await _select(redis, selection)
    redriven: list[Redriven] = []
    skipped = list(missing)
    for stored in chosen:
        try:
            redriven.append(
                await letters.redrive(
                    stored.id,
                    redis=redis,
                    broker=broker,
                    pool=pool,
                    on_outbox_written=on_outbox_written,
                )
            )
        except (NotFound, CannotRedrive) as exc:
            skipped.append(Skipped(id=stored.id, status_code=exc.status_code, reason=str(exc)))
    log.info("bulk re-drive: %d re-driven, %d skipped", len(redriven), len(skipped))
    return BulkOutcome(
        matched=len(chosen) + remaining,
        redriven=redriven,
        skipped=skipped,
        remaining=remaining,
    )


async def discard_many(selection: LetterSelection, *, redis: Redis, user: User) -> BulkOutcome:
    """Remove each selected letter from the stream, logging what it held."""
    chosen, missing, remaining = await _select(redis, selection)
    async with redis.pipeline(transaction=False) as pipe:
        for stored in chosen:
            pipe.xdel(DEAD_STREAM, stored.id)
        removed = await pipe.execute()
    discarded: list[str] = []
    skipped = list(missing)
    for stored, count in zip(chosen, removed, strict=True):
        if not count:  # another call removed it meanwhile
            skipped.append(Skipped(id=stored.id, status_code=404, reason="not found"))
            continue
        discarded.append(stored.id)
        _log_discard(stored, user)
    return BulkOutcome(
        matched=len(chosen) + remaining, discarded=discarded, skipped=skipped, remaining=remaining
    )


async def forget_letters_of(
    redis: Redis,
    *,
    file_ids: Set[str] = frozenset(),
    task_ids: Set[str] = frozenset(),
    upto: str | None,
) -> int:
    """Remove the letters, up to entry `upto`, of work reopened by other means (a job's
    retry-failed, a task retry); how many. A letter written after `upto` is a new failure of
    the reopened work, and stays."""
    if upto is None:
        return 0
    stale = [
        stored.id
        async for stored in scan(redis, LetterFilter(), upto=upto)
        if _names_work(stored, file_ids, task_ids)
    ]
    if stale:
        await redis.xdel(DEAD_STREAM, *stale)
        log.info("dropped %d dead letters of work queued again", len(stale))
    return len(stale)


def _names_work(stored: StoredLetter, file_ids: Set[str], task_ids: Set[str]) -> bool:
    command = stored.command()
    if command is not None:
        return command.file_id in file_ids
    task = stored.task()
    return task is not None and task.task_id in task_ids


async def _select(
    redis: Redis, selection: LetterSelection
) -> tuple[list[StoredLetter], list[Skipped], int]:
    """The letters to act on (oldest first), the ids not found, and how many matched past the
    limit."""
    if selection.filter is not None:
        found = list(reversed(await matching(redis, selection.filter)))
        return found[: selection.limit], [], max(0, len(found) - selection.limit)
    wanted = list(dict.fromkeys(selection.ids or ()))  # a repeated id is one letter
    found = sorted(await letters.get_letters(redis, wanted), key=lambda stored: _order(stored.id))
    present = {stored.id for stored in found}
    missing = [
        Skipped(id=letter_id, status_code=404, reason=f"dead letter {letter_id} not found")
        for letter_id in wanted
        if letter_id not in present
    ]
    return found[: selection.limit], missing, max(0, len(found) - selection.limit)


def _order(entry_id: str) -> tuple[int, int]:
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence)


def _log_discard(stored: StoredLetter, user: User) -> None:
    letter = stored.letter
    held = {} if letter is None else letters.named_ids(letter.body)
    task = stored.task()
    log.warning(
        "dead letter %s discarded by %s: %s",
        stored.id,
        user.name,
        "unreadable entry" if letter is None else f"{letter.stream}: {letter.error}",
        extra={
            "letter_id": stored.id,
            "user_id": user.id,
            "stream": None if letter is None else letter.stream,
            "entry_id": None if letter is None else letter.entry_id,
            "error": None if letter is None else letter.error,
            "attempts": None if letter is None else letter.attempts,
            "job_id": held.get("job_id"),
            "file_id": held.get("file_id"),
            "task_id": None if task is None else task.task_id,
            "body": None if letter is None else letter.body[:2000],
        },
    )
