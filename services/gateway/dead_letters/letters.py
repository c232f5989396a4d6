"""Dead letters for admins: reading `downlink:dead`, and re-driving a letter's work.

A download or task letter is re-driven through PostgreSQL (file and job, or task, reopened,
command in the outbox), so the record stays right; any other letter (a poison body, an event)
goes back onto its original stream as it was, for its consumer to try once more.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import msgspec

from services.gateway.dead_letters.queries import reopen_for_redrive, reopen_task_for_redrive
from services.gateway.errors import CannotRedrive, DeadLetterNotFound
from shared.consumer import ATTEMPT_HEADER, DeadLetter
from shared.events import DOWNLOAD_DECODER, TASK_DECODER, DownloadFile, RunTask
from shared.streams import DEAD_STREAM, DOWNLOAD_LANES, cancelled_key
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import asyncpg
    from faststream.redis import RedisBroker
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

LETTER_FIELD = b"letter"
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
_LETTER_DECODER = msgspec.json.Decoder(DeadLetter)
# Frame headers FastStream writes itself; the attempt count starts afresh on a re-drive.
_FRESH_HEADERS = frozenset({ATTEMPT_HEADER, "correlation_id", "reply_to"})


class StoredLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A dead-stream entry: its id and the letter, or None when the entry is not one of ours."""

    id: str
    letter: DeadLetter | None

    def command(self) -> DownloadFile | None:
        """The download command the letter carries, or None for anything else."""
        if self.letter is None or self.letter.stream not in DOWNLOAD_LANES:
            return None
        try:
            return DOWNLOAD_DECODER.decode(self.letter.body)
        except msgspec.DecodeError:
            return None  # a poison body on a download lane

    def task(self) -> RunTask | None:
        """The user-defined task the letter carries, or None for anything else."""
        if self.letter is None:
            return None
        try:
            return TASK_DECODER.decode(self.letter.body)
        except msgspec.DecodeError:
            return None  # not a RunTask: its tag differs, or a poison body


class LetterPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of dead letters, newest first, and how many there are in all."""

    letters: list[StoredLetter]
    page: int
    per_page: int
    total: int


class Redriven(msgspec.Struct, frozen=True, kw_only=True):
    """A letter whose work is queued again, with the job and file, or task, it names."""

    id: str
    job_id: str | None = None
    file_id: str | None = None
    task_id: str | None = None


async def list_letters(redis: Redis, *, page: int, per_page: int) -> LetterPage:
    """One page of dead letters, newest first."""
    total = await redis.xlen(DEAD_STREAM)
    # XREVRANGE has no offset: read up to the end of the page and keep its last `per_page`.
    # The stream is capped (shared.trim), so a deep page costs at most that many entries.
    entries = _entries(await redis.xrevrange(DEAD_STREAM, count=page * per_page))
    letters = [_stored(entry_id, fields) for entry_id, fields in entries[(page - 1) * per_page :]]
    return LetterPage(letters=letters, page=page, per_page=per_page, total=total)


async def redrive(
    letter_id: str,
    *,
    redis: Redis,
    broker: RedisBroker,
    pool: asyncpg.Pool,
    on_outbox_written: Callable[[], None],
) -> Redriven:
    """Queue a dead letter's work again and remove the letter.

    Raises DeadLetterNotFound for an unknown id, CannotRedrive when the work may not run again.
    """
    stored = await _get(redis, letter_id)
    if stored.letter is None:
        raise CannotRedrive(f"dead letter {letter_id} is unreadable; it cannot be re-driven")
    command = stored.command()
    task = stored.task() if command is None else None
    if task is not None:
        await reopen_task_for_redrive(pool, task.task_id, headers=trace_headers())
        await _forget(redis, stored.id, on_outbox_written)
        log.info("re-drove dead letter %s: task %s is pending again", stored.id, task.task_id)
        return Redriven(id=stored.id, task_id=task.task_id)
    if command is None:
        await _requeue_raw(redis, broker, stored.id, stored.letter)
        ids = named_ids(stored.letter.body)
        log.info("re-drove dead letter %s onto %s", stored.id, stored.letter.stream)
        return Redriven(id=stored.id, job_id=ids.get("job_id"), file_id=ids.get("file_id"))
    # The original command onto its original lane; the new outbox row carries no attempt
    # header, so the work gets a full set of tries.
    await reopen_for_redrive(
        pool,
        command,
        stream=stored.letter.stream,
        body=stored.letter.body.encode(),
        headers=trace_headers(),
    )
    # Only after the commit: a crash before this point leaves the letter for another try (a
    # duplicate at worst). A job that timed out still has its cancelled flag, which would make
    # the downloaders skip the re-driven command; PostgreSQL says it is not cancelled (a user's
    # cancel racing this line is still recorded there, and the tracker ignores the file then).
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(cancelled_key(command.job_id))
        pipe.xdel(DEAD_STREAM, stored.id)
        await pipe.execute()
    on_outbox_written()
    log.info(
        "re-drove dead letter %s: file %s of job %s is pending again",
        stored.id,
        command.file_id,
        command.job_id,
    )
    return Redriven(id=stored.id, job_id=command.job_id, file_id=command.file_id)


async def _forget(redis: Redis, letter_id: str, on_outbox_written: Callable[[], None]) -> None:
    # Only after the commit: a crash before this leaves the letter, and a second re-drive of
    # it answers 409 while the task is open again.
    await redis.xdel(DEAD_STREAM, letter_id)
    on_outbox_written()


async def _get(redis: Redis, letter_id: str) -> StoredLetter:
    if not _ENTRY_ID.fullmatch(letter_id):
        raise DeadLetterNotFound(letter_id)
    entries = _entries(await redis.xrange(DEAD_STREAM, min=letter_id, max=letter_id, count=1))
    if not entries:
        raise DeadLetterNotFound(letter_id)
    entry_id, fields = entries[0]
    return _stored(entry_id, fields)


async def _requeue_raw(
    redis: Redis, broker: RedisBroker, letter_id: str, letter: DeadLetter
) -> None:
    """Put the letter's body back onto its stream as a FastStream frame, and drop the letter."""
    headers = {k: v for k, v in letter.headers.items() if k not in _FRESH_HEADERS}
    # One MULTI/EXEC: the body is back on its stream exactly when the letter is gone.
    async with redis.pipeline(transaction=True) as pipe:
        await broker.publish(
            letter.body.encode(),  # bytes pass through FastStream unchanged
            stream=letter.stream,
            headers=headers,
            correlation_id=letter.headers.get("correlation_id") or letter.entry_id,
            pipeline=pipe,
        )
        pipe.xdel(DEAD_STREAM, letter_id)
        await pipe.execute()


async def get_letters(redis: Redis, letter_ids: Sequence[str]) -> list[StoredLetter]:
    """The letters of `letter_ids` still on the stream, in the order given."""
    wanted = [letter_id for letter_id in letter_ids if _ENTRY_ID.fullmatch(letter_id)]
    async with redis.pipeline(transaction=False) as pipe:
        for letter_id in wanted:
            pipe.xrange(DEAD_STREAM, min=letter_id, max=letter_id, count=1)
        replies = await pipe.execute()
    return [stored for reply in replies for stored in read_entries(reply)]


async def latest_letter_id(redis: Redis) -> str | None:
    """The id of the newest entry on the dead-letter stream; None when it is empty."""
    entries = _entries(await redis.xrevrange(DEAD_STREAM, count=1))
    return entries[0][0] if entries else None


def read_entries(response: Any) -> list[StoredLetter]:
    """The letters of an XRANGE or XREVRANGE reply on the dead-letter stream."""
    return [_stored(entry_id, fields) for entry_id, fields in _entries(response)]


def _entries(response: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    # redis-py types stream replies loosely; ours are (id, fields) pairs of bytes.
    return [
        (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), fields or {})
        for entry_id, fields in response or []
    ]


def _stored(text_id: str, fields: dict[bytes, bytes]) -> StoredLetter:
    raw = fields.get(LETTER_FIELD)
    try:
        letter = _LETTER_DECODER.decode(raw) if raw is not None else None
    except msgspec.DecodeError:
        log.warning("dead-letter entry %s is not a DeadLetter; shown as unreadable", text_id)
        letter = None
    return StoredLetter(id=text_id, letter=letter)


def named_ids(body: str) -> dict[str, str]:
    """job_id, file_id and url where a non-command body (an event, say) is JSON that has them."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return {}
    if not isinstance(decoded, dict):
        return {}
    return {
        name: value
        for name in ("job_id", "file_id", "url")
        if isinstance(value := decoded.get(name), str)
    }
