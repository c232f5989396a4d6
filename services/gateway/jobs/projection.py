"""The forward-only projection of the downloaders' file events onto `files`.

Every UPDATE names the states it may leave, so state only moves forward:
pending -> downloading -> completed | failed | cancelled, and a final state never changes.
Each rule is one UPDATE for a whole list of events (at most one per file, the tracker sees to
that), and each UPDATE that moves files also moves their jobs' counters in the same statement
(the statement-level trigger of migration 0007), so a file counts once and a replayed or late
event moves nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.jobs.lifecycle import mark_jobs_in_progress
from services.gateway.processing.queueing import after_download
from services.gateway.projection import Projector
from shared.events import FileDownloaded, FileFailed, FileProgress, FileStarted
from shared.ids import JobId

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg


async def files_started(
    connection: asyncpg.Connection, events: Sequence[FileStarted]
) -> set[JobId]:
    """pending -> downloading (a resumed download stays downloading); the jobs are in progress."""
    moved = await connection.fetch(
        "UPDATE files f SET status = 'downloading',"
        " started_at = coalesce(f.started_at, to_timestamp(e.at)),"
        " attempts = greatest(f.attempts, e.attempt), updated_at = now()"
        " FROM unnest($1::uuid[], $2::uuid[], $3::float8[], $4::int[])"
        "   AS e(id, job_id, at, attempt)"
        " WHERE f.id = e.id AND f.job_id = e.job_id AND f.status IN ('pending', 'downloading')"
        " RETURNING f.job_id",
        [e.file_id for e in events],
        [e.job_id for e in events],
        [e.at for e in events],
        [e.attempt for e in events],
    )
    if moved:
        await mark_jobs_in_progress(connection, {row["job_id"] for row in moved})
    return set()  # a start ends nothing


async def files_progressed(
    connection: asyncpg.Connection, events: Sequence[FileProgress]
) -> set[JobId]:
    # Only while downloading: progress arriving after the file ended must not touch it.
    await connection.execute(
        "UPDATE files f SET bytes_downloaded = greatest(f.bytes_downloaded, e.done),"
        " total_bytes = coalesce(e.total, f.total_bytes), rate_bps = e.rate, updated_at = now()"
        " FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[], $5::float8[])"
        "   AS e(id, job_id, done, total, rate)"
        " WHERE f.id = e.id AND f.job_id = e.job_id AND f.status = 'downloading'",
        [e.file_id for e in events],
        [e.job_id for e in events],
        [e.bytes_downloaded for e in events],
        [e.total_bytes for e in events],
        [e.rate_bps for e in events],
    )
    return set()


async def files_downloaded(
    connection: asyncpg.Connection, events: Sequence[FileDownloaded]
) -> set[JobId]:
    """-> completed; queues the files' processing and the composites now complete.

    A fast file reports no start: its completion carries the try's start and attempt.
    """
    stored = await connection.fetch(
        "UPDATE files f SET status = 'completed', filename = e.filename, filepath = e.filepath,"
        " size = e.size, sha256 = e.sha256, content_type = e.content_type,"
        " downloaded_at = to_timestamp(e.at), bytes_downloaded = e.size, total_bytes = e.size,"
        " rate_bps = NULL, error = NULL, updated_at = now(),"
        " started_at = coalesce(f.started_at, to_timestamp(e.started_at)),"
        " attempts = CASE WHEN e.started_at IS NULL THEN f.attempts"
        "   ELSE greatest(f.attempts, e.attempt) END"
        " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[],"
        "   $7::text[], $8::float8[], $9::float8[], $10::int[])"
        "   AS e(id, job_id, filename, filepath, size, sha256, content_type, at, started_at,"
        "   attempt)"
        " WHERE f.id = e.id AND f.job_id = e.job_id AND f.status IN ('pending', 'downloading')"
        " RETURNING f.id",
        [e.file_id for e in events],
        [e.job_id for e in events],
        [e.filename for e in events],
        [e.filepath for e in events],
        [e.size for e in events],
        [e.sha256 for e in events],
        [e.content_type for e in events],
        [e.at for e in events],
        [e.started_at for e in events],
        [e.attempt for e in events],
    )
    if not stored:
        return set()
    done = {str(row["id"]) for row in stored}
    ended = [e for e in events if e.file_id in done]
    processing = await _jobs_with_processing(connection, {e.job_id for e in ended})
    for event in ended:
        if event.job_id in processing:
            await after_download(connection, event)
    return {e.job_id for e in ended}


async def _jobs_with_processing(connection: asyncpg.Connection, job_ids: set[JobId]) -> set[str]:
    """The jobs that may have processing to queue after a download: most have none, and skip
    `after_download` (a query per file)."""
    rows = await connection.fetch(
        "SELECT id FROM jobs WHERE id = ANY($1::uuid[])"
        " AND (options ? 'process' OR options ? 'composites')",
        list(job_ids),
    )
    return {str(row["id"]) for row in rows}


async def files_failed(connection: asyncpg.Connection, events: Sequence[FileFailed]) -> set[JobId]:
    ended = await connection.fetch(
        "UPDATE files f SET status = 'failed', error = e.error,"
        " attempts = greatest(f.attempts, e.attempts), rate_bps = NULL, updated_at = now()"
        " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int[])"
        "   AS e(id, job_id, error, attempts)"
        " WHERE f.id = e.id AND f.job_id = e.job_id AND f.status IN ('pending', 'downloading')"
        " RETURNING f.job_id",
        [e.file_id for e in events],
        [e.job_id for e in events],
        [e.error for e in events],
        [e.attempts for e in events],
    )
    return {JobId(str(row["job_id"])) for row in ended}


PROJECTORS: dict[type, Projector] = {
    FileStarted: Projector(apply=files_started),
    FileProgress: Projector(apply=files_progressed, claimed=False),
    FileDownloaded: Projector(apply=files_downloaded, writes_outbox=True),
    FileFailed: Projector(apply=files_failed, writes_outbox=True),
}
