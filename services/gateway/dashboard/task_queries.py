"""What the tasks, workflows and schedules screens read from PostgreSQL beyond the JSON API's
own queries: lists across users (admins) with the owner's name, and whose an id is.

Every query takes `owner` or `viewer`: a user id to see only that user's rows, or None
(admins) for all. One row's details come from the areas' own queries (tasks.queries,
workflows.queries, schedules.queries), called with the owner these answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from services.gateway.tasks.live import TaskTry
from services.gateway.tasks.selection import TASK_WHERE, task_filter_args
from shared.ids import UserId

if TYPE_CHECKING:
    import asyncpg

    from services.gateway.tasks.selection import TaskFilter
    from services.gateway.workflows.records import WorkflowStatus

TRIES_SHOWN = 200


class TaskRow(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the tasks list."""

    id: str
    task: str
    user_name: str
    status: str
    attempts: int
    progress: dict[str, Any] | None
    worker: str | None
    created_at: datetime
    finished_at: datetime | None


class WorkflowRow(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the workflows list, with how many of its steps ended."""

    id: str
    name: str | None
    user_name: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    steps: int
    steps_done: int


class ScheduleRow(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the schedules list."""

    id: str
    name: str | None
    user_name: str
    task: str
    cron: str | None
    timezone: str
    every_s: float | None
    paused: bool
    next_run_at: datetime
    last_run_at: datetime | None
    last_task_id: str | None
    last_workflow_id: str | None


async def list_tasks(
    pool: asyncpg.Pool, owner: UserId | None, wanted: TaskFilter, *, page: int, per_page: int
) -> tuple[list[TaskRow], int]:
    """One page of the tasks matching `wanted`, newest first, and how many match in all."""
    args = task_filter_args(owner, wanted)
    source = " FROM tasks t JOIN users u ON u.id = t.user_id" + TASK_WHERE
    async with pool.acquire() as connection, connection.transaction(readonly=True):
        total = await connection.fetchval(f"SELECT count(*){source}", *args)
        rows = await connection.fetch(
            "SELECT t.id::text, t.task, u.name AS user_name, t.status, t.attempts, t.progress,"
            f" t.worker, t.created_at, t.finished_at{source}"
            " ORDER BY t.created_at DESC, t.id DESC LIMIT $7 OFFSET $8",
            *args,
            per_page,
            (page - 1) * per_page,
        )
    return [msgspec.convert(dict(row), TaskRow) for row in rows], total


async def task_tries(pool: asyncpg.Pool, task_id: str) -> list[TaskTry]:
    """The task's tries (its executions history), latest first."""
    rows = await pool.fetch(
        "SELECT attempt, status, worker, started_at, finished_at, duration_s, error"
        " FROM executions WHERE task = 'task' AND subject_id = $1 ORDER BY id DESC LIMIT $2",
        task_id,
        TRIES_SHOWN,
    )
    return [msgspec.convert(dict(row), TaskTry) for row in rows]


async def list_workflows(
    pool: asyncpg.Pool,
    owner: UserId | None,
    status: WorkflowStatus | None,
    *,
    page: int,
    per_page: int,
) -> tuple[list[WorkflowRow], int]:
    """One page of the workflows in `status` (None: any), newest first, and how many in all."""
    where = " WHERE ($1::uuid IS NULL OR w.user_id = $1) AND ($2::text IS NULL OR w.status = $2)"
    async with pool.acquire() as connection, connection.transaction(readonly=True):
        total = await connection.fetchval(f"SELECT count(*) FROM workflows w{where}", owner, status)
        rows = await connection.fetch(
            "SELECT w.id::text, w.name, u.name AS user_name, w.status, w.created_at,"
            " w.finished_at, s.steps, s.steps_done FROM workflows w"
            " JOIN users u ON u.id = w.user_id"
            " CROSS JOIN LATERAL (SELECT count(*) AS steps, count(*) FILTER (WHERE status IN"
            "  ('completed', 'failed', 'cancelled', 'skipped')) AS steps_done"
            "  FROM workflow_steps WHERE workflow_id = w.id) s"
            f"{where} ORDER BY w.created_at DESC, w.id DESC LIMIT $3 OFFSET $4",
            owner,
            status,
            per_page,
            (page - 1) * per_page,
        )
    return [msgspec.convert(dict(row), WorkflowRow) for row in rows], total


async def list_schedules(
    pool: asyncpg.Pool, owner: UserId | None, *, page: int, per_page: int
) -> tuple[list[ScheduleRow], int]:
    """One page of the schedules, newest first, and how many there are in all."""
    where = " WHERE $1::uuid IS NULL OR s.user_id = $1"
    async with pool.acquire() as connection, connection.transaction(readonly=True):
        total = await connection.fetchval(f"SELECT count(*) FROM schedules s{where}", owner)
        rows = await connection.fetch(
            "SELECT s.id::text, s.name, u.name AS user_name, s.task, s.cron, s.timezone,"
            " s.every_s, s.paused, s.next_run_at, s.last_run_at, s.last_task_id::text,"
            " s.last_workflow_id::text FROM schedules s JOIN users u ON u.id = s.user_id"
            f"{where} ORDER BY s.created_at DESC, s.id DESC LIMIT $2 OFFSET $3",
            owner,
            per_page,
            (page - 1) * per_page,
        )
    return [msgspec.convert(dict(row), ScheduleRow) for row in rows], total


_OWNED = {"tasks", "workflows", "schedules"}


async def owner_in(
    pool: asyncpg.Pool, table: str, row_id: str, viewer: UserId | None
) -> UserId | None:
    """Who owns the task, workflow or schedule (`table`), if `viewer` may see it (None: any
    row); None when it is not there."""
    if table not in _OWNED:
        raise ValueError(f"table: {table!r} is not one of {', '.join(sorted(_OWNED))}")
    found = await pool.fetchval(
        f"SELECT user_id::text FROM {table} WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)",
        row_id,
        viewer,
    )
    return None if found is None else UserId(found)
