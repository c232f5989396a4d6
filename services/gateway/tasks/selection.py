"""Which tasks a filter picks: the one WHERE clause the dashboard's list and the bulk actions
(retry or cancel every matching task) share."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from shared.task_types import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

    from shared.ids import UserId


class TaskFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What the tasks list is narrowed to; None everywhere lists every task the viewer may see."""

    task: str | None = None
    status: TaskStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None

    def query(self) -> dict[str, str]:
        """The filter as the query string of the form that set it (for links to other pages)."""
        values = {
            "task": self.task,
            "status": self.status,
            "since": self.since and self.since.strftime("%Y-%m-%dT%H:%M"),
            "until": self.until and self.until.strftime("%Y-%m-%dT%H:%M"),
            "user": self.user,
        }
        return {name: str(value) for name, value in values.items() if value is not None}


# Over `tasks t JOIN users u`; $1 is the owner (None: every user's), $2-$6 the filter's fields.
TASK_WHERE = (
    " WHERE ($1::uuid IS NULL OR t.user_id = $1) AND ($2::text IS NULL OR t.task = $2)"
    " AND ($3::text IS NULL OR t.status = $3)"
    " AND ($4::timestamptz IS NULL OR t.created_at >= $4)"
    " AND ($5::timestamptz IS NULL OR t.created_at < $5)"
    " AND ($6::text IS NULL OR u.name = $6)"
)


def task_filter_args(
    owner: UserId | None, wanted: TaskFilter
) -> tuple[UserId | None, str | None, str | None, datetime | None, datetime | None, str | None]:
    """TASK_WHERE's arguments, $1 to $6."""
    return (owner, wanted.task, wanted.status, wanted.since, wanted.until, wanted.user)


async def matching_tasks(
    pool: asyncpg.Pool,
    owner: UserId | None,
    wanted: TaskFilter,
    *,
    statuses: Sequence[TaskStatus],
    limit: int,
) -> tuple[list[str], int]:
    """Ids of the tasks matching `wanted` that are in one of `statuses`, oldest first, at most
    `limit`; and how many match in all."""
    rows = await pool.fetch(
        "SELECT t.id::text AS id, count(*) OVER () AS total"
        f" FROM tasks t JOIN users u ON u.id = t.user_id{TASK_WHERE}"
        " AND t.status = ANY($7::text[]) ORDER BY t.created_at, t.id LIMIT $8",
        *task_filter_args(owner, wanted),
        [str(status) for status in statuses],
        limit,
    )
    total = int(rows[0]["total"]) if rows else 0
    return [row["id"] for row in rows], total
