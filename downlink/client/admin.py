"""Operations of operators and owners on failed work: queue stats, dead letters (list, re-drive,
discard, one or in bulk), and retrying a job's failed files or one's failed tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from downlink.client.models import (
    DeadLetterFilter,
    DeadLetterPage,
    FailedFilesRetried,
    LettersDiscarded,
    LettersRetried,
    QueueReport,
    Requeued,
    TasksRetried,
)
from downlink.client.protocol import API, Operation, call

if TYPE_CHECKING:
    from collections.abc import Sequence

LETTERS = f"{API}/dead-letters"


def queues() -> Operation[QueueReport]:
    return (yield from call("GET", f"{API}/queues", QueueReport))


def dead_letters(
    letter_filter: DeadLetterFilter | None, *, page: int, per_page: int
) -> Operation[DeadLetterPage]:
    params: dict[str, str | int | None] = {"page": page, "per_page": per_page}
    params |= msgspec.to_builtins(letter_filter or DeadLetterFilter())
    return (yield from call("GET", LETTERS, DeadLetterPage, params=params))


def retry_dead_letter(letter_id: str) -> Operation[Requeued]:
    return (yield from call("POST", f"{LETTERS}/{letter_id}/retry", Requeued))


def retry_dead_letters(
    ids: Sequence[str] | None, letter_filter: DeadLetterFilter | None, *, limit: int
) -> Operation[LettersRetried]:
    body = _selection(ids, letter_filter, limit)
    return (yield from call("POST", f"{LETTERS}/retry", LettersRetried, json=body))


def discard_dead_letters(
    ids: Sequence[str] | None, letter_filter: DeadLetterFilter | None, *, limit: int
) -> Operation[LettersDiscarded]:
    body = _selection(ids, letter_filter, limit)
    return (yield from call("POST", f"{LETTERS}/discard", LettersDiscarded, json=body))


def retry_failed_files(job_id: str) -> Operation[FailedFilesRetried]:
    path = f"{API}/downloads/jobs/{job_id}/retry-failed"
    return (yield from call("POST", path, FailedFilesRetried))


def retry_tasks(
    task: str | None, statuses: Sequence[str] | None, *, limit: int
) -> Operation[TasksRetried]:
    body: dict[str, Any] = {"limit": limit}
    if task is not None:
        body["task"] = task
    if statuses:
        body["status"] = list(statuses)
    return (yield from call("POST", f"{API}/tasks/retry", TasksRetried, json=body))


def _selection(
    ids: Sequence[str] | None, letter_filter: DeadLetterFilter | None, limit: int
) -> dict[str, Any]:
    # Explicit ids win; no ids and no filter is every letter, as the API's `{"filter": {}}`.
    if ids is not None:
        return {"ids": list(ids), "limit": limit}
    return {"filter": msgspec.to_builtins(letter_filter or DeadLetterFilter()), "limit": limit}
