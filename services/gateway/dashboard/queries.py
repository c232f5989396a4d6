"""What the dashboard's screens read from PostgreSQL: counts, throughput, job rows, a job's parts.

Every query takes `owner`: a user id to see only that user's rows, or None (admins) for all.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from services.gateway.jobs.selection import JOB_WHERE, job_filter_args
from shared.ids import UserId
from shared.streams import DOWNLOAD_LANES, Lane, download_stream, lane_for, task_stream

if TYPE_CHECKING:
    import asyncpg

    from services.gateway.jobs.selection import JobFilter
    from shared.ids import JobId

THROUGHPUT_WINDOW_MIN = 60
FILES_PER_PAGE = 500
EXECUTIONS_SHOWN = 200
TIMELINE_SHOWN = 500


class JobRow(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the jobs list."""

    id: str
    user_name: str
    status: str
    priority: int
    metadata: dict[str, Any]
    created_at: datetime
    total_files: int
    files_done: int
    bytes_downloaded: int


class FileRow(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a job as its page shows it."""

    id: str
    position: int
    name: str
    status: str
    bytes_downloaded: int
    total_bytes: int | None
    rate_bps: float | None
    attempts: int
    error: str | None


class ExecutionRow(msgspec.Struct, frozen=True, kw_only=True):
    """One try of one task of the job."""

    task: str
    status: str
    attempt: int
    worker: str | None
    started_at: datetime
    duration_s: float | None
    error: str | None
    file_id: str | None


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event of the job; `id` is where its SSE stream resumes."""

    id: int
    type: str
    at: float
    payload: dict[str, Any]


class LaneWait(msgspec.Struct, frozen=True, kw_only=True):
    """How long work waited in one lane between its enqueue and its first try's start, over the
    last hour (None: nothing started there)."""

    lane: str
    runs: int = 0
    median_s: float | None = None
    p95_s: float | None = None


class ExportRow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: str
    format: str
    size: int | None
    error: str | None


async def count_by_status(pool: asyncpg.Pool, table: str, owner: UserId | None) -> dict[str, int]:
    """How many jobs or tasks (`table`) there are in each status."""
    if table not in {"jobs", "tasks"}:
        raise ValueError(f"table: {table!r} is not jobs or tasks")
    rows = await pool.fetch(
        f"SELECT status, count(*) AS n FROM {table}"
        " WHERE $1::uuid IS NULL OR user_id = $1 GROUP BY status",
        owner,
    )
    return {row["status"]: row["n"] for row in rows}


async def throughput(pool: asyncpg.Pool, owner: UserId | None) -> list[tuple[int, int]]:
    """Files and bytes stored in each minute of the last hour, oldest minute first."""
    rows = await pool.fetch(
        "SELECT floor(extract(epoch FROM now() - f.downloaded_at) / 60)::int AS ago,"
        " count(*) AS files, coalesce(sum(f.size), 0)::bigint AS bytes"
        " FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.downloaded_at > now() - make_interval(mins => $2)"
        " AND ($1::uuid IS NULL OR j.user_id = $1) GROUP BY 1",
        owner,
        THROUGHPUT_WINDOW_MIN,
    )
    per_minute = [(0, 0)] * THROUGHPUT_WINDOW_MIN
    for row in rows:
        ago = min(max(row["ago"], 0), THROUGHPUT_WINDOW_MIN - 1)
        per_minute[THROUGHPUT_WINDOW_MIN - 1 - ago] = (row["files"], row["bytes"])
    return per_minute


# The first try of each run started within the window: a download waited from its job's submit
# (or its re-drive), a task from when it was due. Lanes by priority as shared.streams.lane_for.
_WAITS = """
WITH recent AS MATERIALIZED (
  SELECT task, subject_id, job_id, started_at FROM executions
  WHERE attempt = 1 AND task IN ('download', 'task')
    AND started_at > now() - make_interval(mins => $2) AND ($1::uuid IS NULL OR user_id = $1)
), waits AS (
  SELECT NULL AS queue, j.priority, extract(epoch FROM r.started_at - greatest(j.created_at,
    CASE WHEN j.reopened_at <= r.started_at THEN j.reopened_at END)) AS wait_s
  FROM recent r JOIN jobs j ON j.id = r.job_id WHERE r.task = 'download'
  UNION ALL
  SELECT t.queue, t.priority, extract(epoch FROM r.started_at - t.run_at)
  FROM recent r JOIN tasks t ON t.id = r.subject_id::uuid WHERE r.task = 'task'
)
SELECT queue, ($3::text[])[priority] AS lane, count(*) AS runs,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY greatest(wait_s, 0)) AS median_s,
  percentile_cont(0.95) WITHIN GROUP (ORDER BY greatest(wait_s, 0)) AS p95_s
FROM waits GROUP BY 1, 2
"""


async def queue_waits(pool: asyncpg.Pool, owner: UserId | None) -> list[LaneWait]:
    """Median and p95 time in queue per lane over the last hour: every download lane, then
    each task queue's lanes that ran something, by name."""
    lanes = [str(lane_for(priority)) for priority in range(1, 11)]
    rows = await pool.fetch(_WAITS, owner, THROUGHPUT_WINDOW_MIN, lanes)
    waits: dict[str, LaneWait] = {}
    for row in rows:
        lane = Lane(row["lane"])
        name = download_stream(lane) if row["queue"] is None else task_stream(row["queue"], lane)
        waits[name] = LaneWait(
            lane=name, runs=row["runs"], median_s=row["median_s"], p95_s=row["p95_s"]
        )
    shown = [waits.pop(name, LaneWait(lane=name)) for name in DOWNLOAD_LANES]
    return shown + [waits[name] for name in sorted(waits)]


async def list_jobs(
    pool: asyncpg.Pool, owner: UserId | None, wanted: JobFilter, *, page: int, per_page: int
) -> tuple[list[JobRow], int]:
    """One page of the jobs matching `wanted`, newest first, and how many match in all."""
    args = job_filter_args(owner, wanted)
    source = " FROM jobs j JOIN users u ON u.id = j.user_id" + JOB_WHERE
    async with pool.acquire() as connection, connection.transaction(readonly=True):
        total = await connection.fetchval(f"SELECT count(*){source}", *args)
        rows = await connection.fetch(
            "SELECT j.id::text, u.name AS user_name, j.status, j.priority, j.metadata,"
            " j.created_at, j.total_files, j.bytes_downloaded,"
            " j.files_completed + j.files_failed + j.files_cancelled AS files_done"
            f"{source} ORDER BY j.created_at DESC, j.id DESC LIMIT $8 OFFSET $9",
            *args,
            per_page,
            (page - 1) * per_page,
        )
    return [msgspec.convert(dict(row), JobRow) for row in rows], total


async def job_owner(pool: asyncpg.Pool, job_id: JobId, viewer: UserId | None) -> UserId | None:
    """Who owns the job, if `viewer` may see it (None: any job); None when it is not there."""
    found = await pool.fetchval(
        "SELECT user_id::text FROM jobs WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)",
        job_id,
        viewer,
    )
    return None if found is None else UserId(found)


async def job_files(pool: asyncpg.Pool, job_id: JobId, *, page: int) -> list[FileRow]:
    rows = await pool.fetch(
        "SELECT id::text, position, coalesce(filename, requested_name, url) AS name, status,"
        " bytes_downloaded, coalesce(size, total_bytes) AS total_bytes, rate_bps, attempts, error"
        " FROM files WHERE job_id = $1 ORDER BY position LIMIT $2 OFFSET $3",
        job_id,
        FILES_PER_PAGE,
        (page - 1) * FILES_PER_PAGE,
    )
    return [msgspec.convert(dict(row), FileRow) for row in rows]


async def job_executions(pool: asyncpg.Pool, job_id: JobId) -> list[ExecutionRow]:
    rows = await pool.fetch(
        "SELECT task, status, attempt, worker, started_at, duration_s, error, file_id::text"
        " FROM executions WHERE job_id = $1 ORDER BY id DESC LIMIT $2",
        job_id,
        EXECUTIONS_SHOWN,
    )
    return [msgspec.convert(dict(row), ExecutionRow) for row in rows]


async def job_timeline(pool: asyncpg.Pool, job_id: JobId) -> tuple[list[TimelineEntry], str | None]:
    """The job's latest recorded events, oldest first, and the trace id its work ran under."""
    rows = await pool.fetch(
        "SELECT id, type, at, payload FROM ("
        "  SELECT id, type, at, payload FROM job_events WHERE job_id = $1"
        "  ORDER BY id DESC LIMIT $2) e ORDER BY id",
        job_id,
        TIMELINE_SHOWN,
    )
    trace_id = await pool.fetchval(
        "SELECT trace_id FROM job_events WHERE job_id = $1 AND trace_id IS NOT NULL"
        " ORDER BY id LIMIT 1",
        job_id,
    )
    return [msgspec.convert(dict(row), TimelineEntry) for row in rows], trace_id


async def export_of(pool: asyncpg.Pool, export_id: str, owner: UserId) -> ExportRow | None:
    row = await pool.fetchrow(
        "SELECT id::text, status, format, size, error FROM exports WHERE id = $1 AND user_id = $2",
        export_id,
        owner,
    )
    return None if row is None else msgspec.convert(dict(row), ExportRow)


async def export_owner(pool: asyncpg.Pool, export_id: str, viewer: UserId | None) -> UserId | None:
    found = await pool.fetchval(
        "SELECT user_id::text FROM exports WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)",
        export_id,
        viewer,
    )
    return None if found is None else UserId(found)


async def file_owner(pool: asyncpg.Pool, file_id: str, viewer: UserId | None) -> UserId | None:
    """Who owns the downloaded file or processing artifact, if `viewer` may fetch it."""
    found = await pool.fetchval(
        "SELECT j.user_id::text FROM jobs j WHERE j.id = ("
        "  SELECT job_id FROM files WHERE id = $1"
        "  UNION ALL SELECT job_id FROM artifacts WHERE id = $1 LIMIT 1)"
        " AND ($2::uuid IS NULL OR j.user_id = $2)",
        file_id,
        viewer,
    )
    return None if found is None else UserId(found)
