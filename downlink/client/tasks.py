"""Operations on tasks: enqueue (one or a batch), status, result, cancel, listing, types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from downlink.client.errors import DownlinkError, TaskCancelledError, TaskFailedError
from downlink.client.models import (
    Enqueued,
    EnqueuedBatch,
    Task,
    TaskCancelled,
    TaskPage,
    TaskType,
    TaskTypeList,
)
from downlink.client.protocol import (
    API,
    FIRST_POLL_S,
    MAX_POLL_S,
    Deadline,
    Operation,
    Sleep,
    call,
)
from shared.task_types import TaskStatus

if TYPE_CHECKING:
    from datetime import datetime

BATCH_SIZE = 1000  # the most POST /tasks/batch takes at once
_FAILED = {TaskStatus.FAILED, TaskStatus.DEAD}


def enqueue(
    task: str,
    args: Mapping[str, Any],
    *,
    priority: int | None,
    defer_s: float | None,
    run_at: datetime | None,
    idempotency_key: str | None,
) -> Operation[Enqueued]:
    body = _task_item(task, args, priority=priority, defer_s=defer_s, run_at=run_at)
    return (
        yield from call(
            "POST",
            f"{API}/tasks",
            Enqueued,
            json=body,
            headers={"Idempotency-Key": idempotency_key},
        )
    )


def enqueue_many(
    task: str, args: Sequence[Mapping[str, Any]], *, priority: int | None
) -> Operation[list[Enqueued]]:
    """One POST /tasks/batch per BATCH_SIZE tasks; the answers in the order of `args`.

    Each batch is queued whole or not at all; a refused one leaves the batches before it queued,
    and its error says which items it held (the gateway's `tasks[i]` counts within the batch).
    """
    enqueued: list[Enqueued] = []
    for start in range(0, len(args), BATCH_SIZE):
        chunk = args[start : start + BATCH_SIZE]
        items = [_task_item(task, a, priority=priority) for a in chunk]
        try:
            batch = yield from call(
                "POST", f"{API}/tasks/batch", EnqueuedBatch, json={"tasks": items}
            )
        except DownlinkError as exc:
            if start == 0:
                raise
            where = f"items {start}-{start + len(chunk) - 1} (the {start} before are queued)"
            raise type(exc)(
                f"{where}: {exc.message}", status=exc.status, detail=exc.detail
            ) from exc
        enqueued.extend(batch.tasks)
    return enqueued


def _task_item(
    task: str,
    args: Mapping[str, Any],
    *,
    priority: int | None,
    defer_s: float | None = None,
    run_at: datetime | None = None,
) -> dict[str, Any]:
    optional = {"priority": priority, "defer_s": defer_s, "run_at": run_at}
    return {"task": task, "args": dict(args)} | {k: v for k, v in optional.items() if v is not None}


def get_task(task_id: str) -> Operation[Task]:
    return (yield from call("GET", f"{API}/tasks/{task_id}", Task))


def cancel_task(task_id: str) -> Operation[TaskCancelled]:
    return (yield from call("POST", f"{API}/tasks/{task_id}/cancel", TaskCancelled))


def list_tasks(
    *, task: str | None, status: str | None, page: int, per_page: int
) -> Operation[TaskPage]:
    params = {"task": task, "status": status, "page": page, "per_page": per_page}
    return (yield from call("GET", f"{API}/tasks", TaskPage, params=params))


def task_types() -> Operation[list[TaskType]]:
    listed = yield from call("GET", f"{API}/task-types", TaskTypeList)
    return listed.task_types


def task_result(task_id: str, timeout_s: float | None) -> Operation[Any]:
    """The task's result once it completes; its failure or cancellation raised as errors."""
    limit = Deadline(timeout_s)
    pause_s = FIRST_POLL_S
    while True:
        found = yield from get_task(task_id)
        if found.status is TaskStatus.COMPLETED:
            return found.result
        if found.status in _FAILED:
            raise TaskFailedError(task_id, found.status, found.error or "")
        if found.status is TaskStatus.CANCELLED:
            raise TaskCancelledError(task_id)
        left = limit.left(f"task {task_id} still {found.status}")
        yield Sleep(min(pause_s, left))
        pause_s = min(pause_s * 1.5, MAX_POLL_S)
