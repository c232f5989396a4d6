"""The reconciler's TASKS kind: task commands Redis lost, and delayed tasks once due.

A pending task whose run is due and has no live marker is published again from its row. A
delayed task never had one: its first publish is this too, so it is released by PostgreSQL's
clock and survives a Redis flush. Running tasks are left to leases (a dead worker's entry is
reclaimed); a task may run for hours without a word, so there is no staleness rule. A command
published again carries the row's checkpoint, so a task Redis lost resumes where it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from services.gateway.outbox import CommandKind, QueuedCommand, no_row_waiting
from shared.events import ENCODER, TASK_DECODER
from shared.streams import lane_for, task_stream

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg


async def _tasks_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[QueuedCommand]:
    """Pending tasks that are due with no outbox row waiting, in id order after `after`."""
    rows = await connection.fetch(
        "SELECT t.id, t.queue, t.priority, t.command, t.checkpoint FROM tasks t"
        " WHERE t.status = 'pending' AND t.run_at <= now()"
        " AND ($1::uuid IS NULL OR t.id > $1)"
        f" AND {no_row_waiting('$3::text || t.id::text')}"
        " ORDER BY t.id LIMIT $2",
        after,
        limit,
        TASKS.key_prefix,
    )
    return [queued_task(row) for row in rows]


async def _tasks_open(connection: asyncpg.Connection, task_ids: Sequence[str]) -> set[str]:
    rows = await connection.fetch(
        "SELECT id FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'pending'"
        " AND run_at <= now() FOR UPDATE SKIP LOCKED",
        task_ids,
    )
    return {str(row["id"]) for row in rows}


def queued_task(row: asyncpg.Record) -> QueuedCommand:
    """The command of a task row (id, queue, priority, command, checkpoint)."""
    task_id = str(row["id"])
    body = row["command"]
    if row["checkpoint"] is not None:
        command = msgspec.structs.replace(TASK_DECODER.decode(body), checkpoint=row["checkpoint"])
        body = ENCODER.encode(command)
    return QueuedCommand(
        subject_id=task_id,
        key=TASKS.key(task_id),
        stream=task_stream(row["queue"], lane_for(row["priority"])),
        body=body,
    )


TASKS = CommandKind(name="task", key_prefix="task:", sent=_tasks_sent, still_open=_tasks_open)
