"""The schedules area's SQL: writing, reading, listing, pausing and deleting schedules, and
taking the next due one for the scheduler."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from services.gateway.schedules.errors import ScheduleNotFound
from services.gateway.schedules.records import (
    Cadence,
    MissedPolicy,
    Schedule,
    SchedulePage,
)
from shared.ids import UserId

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    import asyncpg

    from services.gateway.schedules.records import NewSchedule

_COLUMNS = (
    "id, user_id, name, cron, timezone, every_s, task, args, queue, priority, task_unique,"
    " missed, paused, next_run_at, last_run_at, last_task_id, created_at, updated_at,"
    " workflow, last_workflow_id"
)


async def insert_schedule(connection: asyncpg.Connection, new: NewSchedule) -> Schedule:
    row = await connection.fetchrow(
        "INSERT INTO schedules (id, user_id, name, cron, timezone, every_s, task, args, queue,"
        " priority, task_unique, missed, paused, next_run_at, workflow)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        f" RETURNING {_COLUMNS}",
        uuid.uuid4(),
        new.user_id,
        new.name,
        new.cadence.cron,
        new.cadence.timezone,
        new.cadence.every_s,
        new.task,
        new.args,
        new.queue,
        new.priority,
        new.unique,
        new.missed,
        new.paused,
        new.next_run_at,
        new.workflow,
    )
    return _record(row)


async def get_schedule(
    connection: asyncpg.Connection | asyncpg.Pool,
    user_id: UserId,
    schedule_id: str,
    *,
    for_update: bool = False,
) -> Schedule:
    lock = " FOR UPDATE" if for_update else ""
    row = await connection.fetchrow(
        f"SELECT {_COLUMNS} FROM schedules WHERE id = $1 AND user_id = $2{lock}",
        schedule_id,
        user_id,
    )
    if row is None:
        raise ScheduleNotFound(schedule_id)
    return _record(row)


async def list_schedules(
    pool: asyncpg.Pool, user_id: UserId, *, page: int, per_page: int
) -> SchedulePage:
    """The caller's schedules, newest first."""
    async with pool.acquire() as connection:
        total = await connection.fetchval(
            "SELECT count(*) FROM schedules WHERE user_id = $1", user_id
        )
        rows = await connection.fetch(
            f"SELECT {_COLUMNS} FROM schedules WHERE user_id = $1"
            " ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
            user_id,
            per_page,
            (page - 1) * per_page,
        )
    return SchedulePage(
        schedules=[_record(r) for r in rows], page=page, per_page=per_page, total=total
    )


async def delete_schedule(pool: asyncpg.Pool, user_id: UserId, schedule_id: str) -> None:
    deleted = await pool.fetchval(
        "DELETE FROM schedules WHERE id = $1 AND user_id = $2 RETURNING id", schedule_id, user_id
    )
    if deleted is None:
        raise ScheduleNotFound(schedule_id)


async def set_paused(
    connection: asyncpg.Connection, schedule_id: str, *, paused: bool, next_run_at: datetime
) -> Schedule:
    row = await connection.fetchrow(
        "UPDATE schedules SET paused = $2, next_run_at = $3, updated_at = now()"
        f" WHERE id = $1 RETURNING {_COLUMNS}",
        schedule_id,
        paused,
        next_run_at,
    )
    return _record(row)


async def next_due(
    connection: asyncpg.Connection, skipping: Sequence[str]
) -> tuple[Schedule, datetime] | None:
    """The schedule due longest, locked for the caller's transaction, and the database's now.

    SKIP LOCKED: a schedule another transaction is firing is not waited for, and once that one
    commits it is no longer due.
    """
    row = await connection.fetchrow(
        f"SELECT {_COLUMNS}, now() AS now FROM schedules"
        " WHERE next_run_at <= now() AND NOT paused AND id <> ALL($1::uuid[])"
        " ORDER BY next_run_at LIMIT 1 FOR UPDATE SKIP LOCKED",
        list(skipping),
    )
    return None if row is None else (_record(row), row["now"])


async def record_run(
    connection: asyncpg.Connection,
    schedule_id: str,
    *,
    task_id: str | None,
    next_run_at: datetime | None,
) -> None:
    """After a run (task_id), a skip (no task_id) or both: the schedule's latest run and,
    unless None, its next one."""
    await connection.execute(
        "UPDATE schedules SET next_run_at = coalesce($3, next_run_at), updated_at = now(),"
        " last_run_at = CASE WHEN $2::uuid IS NULL THEN last_run_at ELSE now() END,"
        " last_task_id = coalesce($2::uuid, last_task_id)"
        " WHERE id = $1",
        schedule_id,
        task_id,
        next_run_at,
    )


def _record(row: asyncpg.Record) -> Schedule:
    last_task_id = row["last_task_id"]
    return Schedule(
        schedule_id=str(row["id"]),
        user_id=UserId(str(row["user_id"])),
        name=row["name"],
        cadence=Cadence(cron=row["cron"], timezone=row["timezone"], every_s=row["every_s"]),
        task=row["task"],
        args=row["args"],
        queue=row["queue"],
        priority=row["priority"],
        unique=row["task_unique"],
        missed=MissedPolicy(row["missed"]),
        paused=row["paused"],
        next_run_at=row["next_run_at"],
        last_run_at=row["last_run_at"],
        last_task_id=None if last_task_id is None else str(last_task_id),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        workflow=row["workflow"],
        last_workflow_id=None if row["last_workflow_id"] is None else str(row["last_workflow_id"]),
    )
