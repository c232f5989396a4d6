"""Submitting a job: the job, its files and one download command per file, in one transaction,
and the job's place in its lane."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.jobs.records import SubmittedJob
from shared.events import ENCODER, DownloadFile
from shared.ids import FileId, JobId, new_file_id, new_job_id
from shared.statuses import JobStatus
from shared.streams import download_stream, lane_for

if TYPE_CHECKING:
    from datetime import datetime

    import asyncpg

    from services.gateway.jobs.records import NewJob

# A job's files not started yet, and not ended yet, from the counters on its row.
_PENDING_FILES = (
    "(total_files - files_downloading - files_completed - files_failed - files_cancelled)"
)
_OPEN_FILES = "(total_files - files_completed - files_failed - files_cancelled)"

# Throughput for estimates is measured over this window.
THROUGHPUT_WINDOW_S = 300


async def submit_job(
    connection: asyncpg.Connection, job: NewJob, *, trace_headers: dict[str, str]
) -> SubmittedJob:
    """Write the job, its files and their commands (the caller's transaction); a repeated
    Idempotency-Key of the same user returns the job written the first time and writes nothing.
    """
    job_id = new_job_id()
    # ON CONFLICT waits for a concurrent insert of the same key to commit, so two racing
    # submissions with one key still end up with one job.
    row = await connection.fetchrow(
        "INSERT INTO jobs (id, user_id, priority, metadata, options, idempotency_key,"
        " total_files, timeout_s) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (user_id, idempotency_key) DO NOTHING"
        " RETURNING id, status, created_at, priority",
        job_id,
        job.user_id,
        job.priority,
        job.metadata,
        job.options,
        job.idempotency_key,
        len(job.files),
        job.timeout_s,
    )
    existing = row is None
    if row is None:
        row = await connection.fetchrow(
            "SELECT id, status, created_at, priority FROM jobs"
            " WHERE user_id = $1 AND idempotency_key = $2",
            job.user_id,
            job.idempotency_key,
        )
        job_id = JobId(str(row["id"]))
        own_open = await connection.fetchval(
            f"SELECT {_OPEN_FILES} FROM jobs WHERE id = $1", job_id
        )
    else:
        await _write_files(connection, job_id, job, trace_headers=trace_headers)
        own_open = len(job.files)
    ahead, estimate = await _place_in_lane(
        connection, job_id, row["priority"], row["created_at"], own_open
    )
    return SubmittedJob(
        job_id=job_id,
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        queue_position=ahead + 1,
        estimated_time_s=estimate,
        existing=existing,
    )


async def _write_files(
    connection: asyncpg.Connection, job_id: JobId, job: NewJob, *, trace_headers: dict[str, str]
) -> None:
    """The job's files, and one DownloadFile per file in the outbox, in submission order."""
    file_ids = [new_file_id() for _ in job.files]
    await connection.execute(
        "INSERT INTO files (id, job_id, position, url, requested_name, expected_sha256)"
        " SELECT f.id, $1, f.position, f.url, f.name, f.sha256"
        " FROM unnest($2::uuid[], $3::int[], $4::text[], $5::text[], $6::text[])"
        " AS f(id, position, url, name, sha256)",
        job_id,
        file_ids,
        list(range(len(job.files))),
        [file.url for file in job.files],
        [file.filename for file in job.files],
        [file.sha256 for file in job.files],
    )
    # A download command's key is its file id (see jobs.commands.DOWNLOADS).
    await connection.execute(
        "INSERT INTO outbox (stream, body, headers, file_id, command_key)"
        " SELECT $1, o.body, $3::jsonb, o.file_id, o.file_id::text"
        " FROM unnest($2::bytea[], $4::uuid[]) WITH ORDINALITY AS o(body, file_id, n)"
        " ORDER BY n",
        download_stream(lane_for(job.priority)),
        _download_commands(job_id, file_ids, job),
        trace_headers,
        file_ids,
    )


def _download_commands(job_id: JobId, file_ids: list[FileId], job: NewJob) -> list[bytes]:
    return [
        ENCODER.encode(
            DownloadFile(
                job_id=job_id,
                file_id=file_id,
                user_id=job.user_id,
                url=file.url,
                filename=file.filename,
                sha256=file.sha256,
                priority=job.priority,
            )
        )
        for file_id, file in zip(file_ids, job.files, strict=True)
    ]


async def _place_in_lane(
    connection: asyncpg.Connection,
    job_id: JobId,
    priority: int,
    created_at: datetime,
    own_open: int,
) -> tuple[int, float | None]:
    """How many files of older jobs wait in the job's lane, and the seconds until the job's
    own files are done at recent throughput (None when nothing finished recently)."""
    lane = lane_for(priority)
    # From the counters of the lane's unfinished jobs (a job with a pending file is unfinished).
    ahead: int = await connection.fetchval(
        f"SELECT coalesce(sum({_PENDING_FILES}), 0) FROM jobs"
        " WHERE finished_at IS NULL AND priority = ANY($1::smallint[])"
        " AND (created_at, id) < ($2, $3)",
        [p for p in range(1, 11) if lane_for(p) is lane],
        created_at,
        job_id,
    )
    done_recently = await connection.fetchval(
        "SELECT count(*) FROM files WHERE downloaded_at > now() - make_interval(secs => $1)",
        float(THROUGHPUT_WINDOW_S),
    )
    rate_per_s = done_recently / THROUGHPUT_WINDOW_S
    estimate = round((ahead + own_open) / rate_per_s, 1) if rate_per_s > 0 else None
    return ahead, estimate
