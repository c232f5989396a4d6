"""A task's life as Server-Sent Events: its tries, progress and status as they change, then its
result or error, polled from PostgreSQL through services.gateway.live.

A task keeps no event log, only its state (the row and one history row per try), so each poll
compares that state with what this stream sent and sends what changed. Ids only grow, from
the Last-Event-ID a client resumes after; a resumed stream (any replica) starts with the
task's current state — each try, its progress, its status — so a client that treats events
as state misses nothing, and the stream ends after `task.finished`, as a live one does.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from services.gateway.live import HEARTBEAT_S, POLL_INTERVAL_S, Feed, polled_stream
from services.gateway.tasks.errors import TaskNotFound
from services.gateway.tasks.queries import get_task
from services.gateway.tasks.records import OPEN_STATUSES
from services.gateway.tasks.schemas import task_response
from shared.task_types import TaskStatus

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar.response import ServerSentEventMessage

    from services.gateway.tasks.records import TaskRecord
    from shared.ids import UserId

FINISHED = "task.finished"


class TaskLiveEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    type: str
    payload: Any


class TaskTry(msgspec.Struct, frozen=True, kw_only=True):
    """One try of a task (`task.attempt`): running, then how it ended."""

    attempt: int
    status: str
    worker: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    error: str | None


class TaskStatusView(msgspec.Struct, frozen=True, kw_only=True):
    """Where a task is (`task.status`)."""

    task_id: str
    status: TaskStatus
    attempts: int
    worker: str | None
    error: str | None


async def _tries(pool: asyncpg.Pool, task_id: str) -> list[tuple[int, TaskTry]]:
    rows = await pool.fetch(
        "SELECT id, attempt, status, worker, started_at, finished_at, duration_s, error"
        " FROM executions WHERE task = 'task' AND subject_id = $1 ORDER BY id",
        task_id,
    )
    return [(row["id"], TaskTry(**{k: v for k, v in row.items() if k != "id"})) for row in rows]


class _TaskFeed:
    """Reads the task's state and turns what changed since the last read into events."""

    def __init__(self, pool: asyncpg.Pool, user_id: UserId, task_id: str) -> None:
        self._pool = pool
        self._user_id = user_id
        self._task_id = task_id
        self._sent: dict[str, bytes] = {}
        self.gone = False

    async def read(self, after_id: int) -> list[TaskLiveEvent]:
        try:
            record = await get_task(self._pool, self._user_id, self._task_id)
        except TaskNotFound:
            self.gone = True  # purged (retention) while followed: nothing more will come
            return []
        parts: list[tuple[str, str, Any]] = [
            (f"try {row_id}", "task.attempt", one)
            for row_id, one in await _tries(self._pool, self._task_id)
        ]
        if record.progress:
            parts.append(("progress", "task.progress", task_response(record).progress))
        parts.append(("status", "task.status", _status(record)))
        if record.status not in OPEN_STATUSES:
            parts.append(("end", FINISHED, task_response(record)))
        events: list[TaskLiveEvent] = []
        for key, kind, payload in parts:
            encoded = msgspec.json.encode(payload)
            if self._sent.get(key) != encoded:
                self._sent[key] = encoded
                after_id += 1
                events.append(TaskLiveEvent(id=after_id, type=kind, payload=payload))
        return events

    async def ended(self) -> bool:
        return self.gone


def _status(record: TaskRecord) -> TaskStatusView:
    return TaskStatusView(
        task_id=record.task_id,
        status=record.status,
        attempts=record.attempts,
        worker=record.worker,
        error=record.error,
    )


def task_event_stream(
    pool: asyncpg.Pool,
    user_id: UserId,
    task_id: str,
    *,
    after_id: int = 0,
    poll_interval_s: float = POLL_INTERVAL_S,
    heartbeat_s: float = HEARTBEAT_S,
    stopping: asyncio.Event | None = None,
) -> AsyncIterator[ServerSentEventMessage]:
    """The task's events, ids after `after_id`, until its `task.finished` has been sent."""
    feed = _TaskFeed(pool, user_id, task_id)
    return polled_stream(
        Feed(name=f"task {task_id}", read=feed.read, last_type=FINISHED, ended=feed.ended),
        after_id=after_id,
        poll_interval_s=poll_interval_s,
        heartbeat_s=heartbeat_s,
        stopping=stopping,
    )
