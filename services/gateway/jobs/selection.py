"""Which jobs a filter picks: the one WHERE clause the dashboard's list and the bulk actions
(cancel every matching job, retry their failed files) share."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from shared.ids import JobId, UserId
from shared.statuses import JobStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg


class JobFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What the jobs list is narrowed to; None everywhere lists every job the viewer may see."""

    status: JobStatus | None = None
    priority: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    user: str | None = None

    def query(self) -> dict[str, str]:
        """The filter as the query string of the form that set it (for links to other pages)."""
        values = {
            "status": self.status,
            "priority": self.priority,
            "since": self.since and self.since.strftime("%Y-%m-%dT%H:%M"),
            "until": self.until and self.until.strftime("%Y-%m-%dT%H:%M"),
            "text": self.text,
            "user": self.user,
        }
        return {name: str(value) for name, value in values.items() if value is not None}


# Over `jobs j JOIN users u`; $1 is the owner (None: every user's), $2-$7 the filter's fields.
JOB_WHERE = (
    " WHERE ($1::uuid IS NULL OR j.user_id = $1) AND ($2::text IS NULL OR j.status = $2)"
    " AND ($3::smallint IS NULL OR j.priority = $3)"
    " AND ($4::timestamptz IS NULL OR j.created_at >= $4)"
    " AND ($5::timestamptz IS NULL OR j.created_at < $5)"
    # strpos, not LIKE: the text is matched as typed, % and _ included.
    " AND ($6::text IS NULL OR strpos(lower(j.metadata::text), lower($6)) > 0)"
    " AND ($7::text IS NULL OR u.name = $7)"
)


def job_filter_args(owner: UserId | None, wanted: JobFilter) -> tuple[object, ...]:
    """JOB_WHERE's arguments, $1 to $7."""
    return (
        owner,
        wanted.status,
        wanted.priority,
        wanted.since,
        wanted.until,
        wanted.text,
        wanted.user,
    )


async def matching_jobs(
    pool: asyncpg.Pool,
    owner: UserId | None,
    wanted: JobFilter,
    *,
    statuses: Sequence[JobStatus],
    with_failed_files: bool = False,
    limit: int,
) -> tuple[list[tuple[JobId, UserId]], int]:
    """The jobs matching `wanted` in one of `statuses` (and with a failed file, if asked),
    each with its owner, oldest first, at most `limit`; and how many match in all."""
    rows = await pool.fetch(
        "SELECT j.id::text AS id, j.user_id::text AS user_id, count(*) OVER () AS total"
        f" FROM jobs j JOIN users u ON u.id = j.user_id{JOB_WHERE}"
        " AND j.status = ANY($8::text[]) AND (NOT $9 OR j.files_failed > 0)"
        " ORDER BY j.created_at, j.id LIMIT $10",
        *job_filter_args(owner, wanted),
        [str(status) for status in statuses],
        with_failed_files,
        limit,
    )
    total = int(rows[0]["total"]) if rows else 0
    return [(JobId(row["id"]), UserId(row["user_id"])) for row in rows], total
