"""HTTP bodies of /api/v1/dead-letters, and their mapping from the stored letters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from services.gateway.dead_letters.bulk import Skipped
from services.gateway.dead_letters.filters import LetterKind, kind_of
from services.gateway.dead_letters.letters import named_ids

if TYPE_CHECKING:
    from services.gateway.dead_letters.bulk import BulkOutcome
    from services.gateway.dead_letters.letters import LetterPage, Redriven, StoredLetter


class DeadLetterView(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of `downlink:dead`.

    `body` is the decoded DownloadFile or RunTask where the letter carries one, else the raw
    body (a poison message); `job_id`, `file_id` and `url`, or `task_id` and `task`, are
    filled in where the body names them.
    """

    id: Annotated[str, msgspec.Meta(description="the entry id on the dead-letter stream")]
    stream: str
    group: str
    entry_id: Annotated[str, msgspec.Meta(description="the entry id on its original stream")]
    error: str
    attempts: int
    consumer: str
    failed_at: datetime
    body: dict[str, Any] | str
    kind: Annotated[
        LetterKind, msgspec.Meta(description="what its stream carried (the `kind` filter)")
    ] = LetterKind.OTHER
    job_id: str | None = None
    file_id: str | None = None
    url: str | None = None
    task_id: str | None = None
    task: Annotated[str | None, msgspec.Meta(description="the task's registered name")] = None


class DeadLetterListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One page of dead letters, newest first."""

    dead_letters: list[DeadLetterView]
    page: int
    per_page: int
    total: int


class RetryResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer to a re-drive: the letter left the dead-letter stream, its work is queued."""

    id: str
    status: Literal["requeued"]
    job_id: str | None = None
    file_id: str | None = None
    task_id: str | None = None


def letter_list_response(page: LetterPage) -> DeadLetterListResponse:
    return DeadLetterListResponse(
        dead_letters=[_view(stored) for stored in page.letters],
        page=page.page,
        per_page=page.per_page,
        total=page.total,
    )


def retry_response(redriven: Redriven) -> RetryResponse:
    return RetryResponse(
        id=redriven.id,
        status="requeued",
        job_id=redriven.job_id,
        file_id=redriven.file_id,
        task_id=redriven.task_id,
    )


def _view(stored: StoredLetter) -> DeadLetterView:
    letter = stored.letter
    if letter is None:
        return DeadLetterView(
            id=stored.id,
            stream="",
            group="",
            entry_id="",
            error="unreadable dead-letter entry",
            attempts=0,
            consumer="",
            failed_at=datetime.fromtimestamp(int(stored.id.split("-")[0]) / 1000, UTC),
            body="",
        )
    command = stored.command()
    task = stored.task() if command is None else None
    body: dict[str, Any] | str
    if command is not None:
        body = msgspec.to_builtins(command)
        ids = {"job_id": command.job_id, "file_id": command.file_id, "url": command.url}
    elif task is not None:
        body = msgspec.to_builtins(task)
        ids = {"task_id": task.task_id, "task": task.task}
    else:
        body = letter.body
        ids = named_ids(letter.body)
    return DeadLetterView(
        id=stored.id,
        stream=letter.stream,
        group=letter.group,
        entry_id=letter.entry_id,
        error=letter.error,
        attempts=letter.attempts,
        consumer=letter.consumer,
        failed_at=datetime.fromtimestamp(letter.failed_at, UTC),
        body=body,
        kind=kind_of(letter.stream),
        job_id=ids.get("job_id"),
        file_id=ids.get("file_id"),
        url=ids.get("url"),
        task_id=ids.get("task_id"),
        task=ids.get("task"),
    )


class BulkRetryResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a bulk re-drive: the letters whose work is queued again, those skipped
    (gone: 404; work that may not run again, or is queued already: 409), and how many matching
    letters were past `limit` (`remaining`: call again for them)."""

    matched: int
    requeued: int
    letters: list[RetryResponse]
    skipped: list[Skipped]
    remaining: int


class BulkDiscardResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a bulk discard: the ids removed from the dead-letter stream, those skipped
    (gone already: 404), and how many matching letters were past `limit`."""

    matched: int
    discarded: int
    ids: list[str]
    skipped: list[Skipped]
    remaining: int


def bulk_retry_response(outcome: BulkOutcome) -> BulkRetryResponse:
    return BulkRetryResponse(
        matched=outcome.matched,
        requeued=len(outcome.redriven),
        letters=[retry_response(redriven) for redriven in outcome.redriven],
        skipped=outcome.skipped,
        remaining=outcome.remaining,
    )


def bulk_discard_response(outcome: BulkOutcome) -> BulkDiscardResponse:
    return BulkDiscardResponse(
        matched=outcome.matched,
        discarded=len(outcome.discarded),
        ids=outcome.discarded,
        skipped=outcome.skipped,
        remaining=outcome.remaining,
    )
