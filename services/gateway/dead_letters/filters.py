"""Which dead letters a listing or a bulk action means: a filter, and the scan that applies it.

The dead-letter stream is capped (shared.trim), so a filtered scan reads at most that many
entries, newest first, in chunks; a letter is matched on what it says about itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import msgspec

from services.gateway.dead_letters.letters import LetterPage, list_letters, named_ids, read_entries
from services.gateway.errors import InvalidRequest
from shared.streams import DEAD_STREAM, DOWNLOAD_LANES, EVENTS_STREAM, EXPORT_STREAM, PROCESS_LANES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

    from services.gateway.dead_letters.letters import StoredLetter

# Entries per XREVRANGE of a scan: a few hundred KiB of letters per round trip.
_SCAN_CHUNK = 500
_TASK_STREAM_PREFIX = "downlink:tasks:"


class LetterKind(StrEnum):
    """What a letter's original stream carried."""

    DOWNLOAD = "download"  # a DownloadFile command on a download lane
    PROCESS = "process"  # a processing command on a process lane
    TASK = "task"  # a user-defined task's RunTask on a task queue lane
    EXPORT = "export"  # an export build
    EVENT = "event"  # an event of downlink:events its consumer could not apply
    OTHER = "other"  # any other stream, or an entry that is not a readable letter


def kind_of(stream: str) -> LetterKind:
    if stream in DOWNLOAD_LANES:
        return LetterKind.DOWNLOAD
    if stream in PROCESS_LANES:
        return LetterKind.PROCESS
    if stream.startswith(_TASK_STREAM_PREFIX):
        return LetterKind.TASK
    if stream == EXPORT_STREAM:
        return LetterKind.EXPORT
    return LetterKind.EVENT if stream == EVENTS_STREAM else LetterKind.OTHER


Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class LetterFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Letters matching every field given; no field given matches every letter.

    `error` is a case-insensitive substring of the error; `failed_after` and `failed_before`
    bound the time of the letter's last failure (when it was dead-lettered), inclusive.
    """

    kind: LetterKind | None = None
    stream: Text | None = None
    error: Text | None = None
    job_id: Text | None = None
    task: Text | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None

    def __post_init__(self) -> None:
        after, before = self.failed_after, self.failed_before
        if after is not None and before is not None and _aware(after) > _aware(before):
            raise InvalidRequest("failed_after: must not be later than failed_before")

    @property
    def is_empty(self) -> bool:
        return self == _NO_FILTER

    def matches(self, stored: StoredLetter) -> bool:
        letter = stored.letter
        if letter is None:
            # An unreadable entry says nothing but that it is one.
            only_kind = msgspec.structs.replace(self, kind=None).is_empty
            return only_kind and self.kind in (None, LetterKind.OTHER)
        failed_at = datetime.fromtimestamp(letter.failed_at, UTC)
        return (
            (self.kind is None or kind_of(letter.stream) is self.kind)
            and (self.stream is None or letter.stream == self.stream)
            and (self.error is None or self.error.casefold() in letter.error.casefold())
            and (self.failed_after is None or failed_at >= _aware(self.failed_after))
            and (self.failed_before is None or failed_at <= _aware(self.failed_before))
            and (self.job_id is None or _job_id(stored) == self.job_id)
            and (self.task is None or _task_name(stored) == self.task)
        )


_NO_FILTER = LetterFilter()


def _aware(moment: datetime) -> datetime:
    # A time without a zone is read as UTC, as failed_at is shown.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _job_id(stored: StoredLetter) -> str | None:
    command = stored.command()
    if command is not None:
        return command.job_id
    return None if stored.letter is None else named_ids(stored.letter.body).get("job_id")


def _task_name(stored: StoredLetter) -> str | None:
    task = stored.task()
    return None if task is None else task.task


async def scan(
    redis: Redis, letter_filter: LetterFilter, *, upto: str = "+"
) -> AsyncIterator[StoredLetter]:
    """Every letter matching the filter, newest first, from entry `upto` down."""
    while True:
        chunk = read_entries(
            await redis.xrevrange(DEAD_STREAM, max=upto, min="-", count=_SCAN_CHUNK)
        )
        for stored in chunk:
            if letter_filter.matches(stored):
                yield stored
        if len(chunk) < _SCAN_CHUNK:
            return
        upto = f"({chunk[-1].id}"  # exclusive: the next chunk starts below the last one read


async def matching(redis: Redis, letter_filter: LetterFilter) -> list[StoredLetter]:
    """All letters matching the filter, newest first."""
    return [stored async for stored in scan(redis, letter_filter)]


async def letter_page(
    redis: Redis, letter_filter: LetterFilter, *, page: int, per_page: int
) -> LetterPage:
    """One page of the letters matching the filter, newest first; `total` counts the matches."""
    if letter_filter.is_empty:
        return await list_letters(redis, page=page, per_page=per_page)
    found = await matching(redis, letter_filter)
    start = (page - 1) * per_page
    return LetterPage(
        letters=found[start : start + per_page], page=page, per_page=per_page, total=len(found)
    )
