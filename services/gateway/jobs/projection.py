"""The forward-only projection of the downloaders' file events onto `files`.

Every UPDATE names the states it may leave, so state only moves forward:
pending -> downloading -> completed | failed | cancelled, and a final state never changes.
Each UPDATE that moves a file also moves its job's counters in the same statement (the trigger
of migration 0007), so a file counts once and a replayed or late event moves nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.jobs.lifecycle import lock_job_of, mark_job_in_progress
from services.gateway.processing.queueing import after_download
from services.gateway.projection import Projector
from shared.events import FileDownloaded, FileFailed, FileProgress, FileStarted
from shared.postgres import rows_affected

if TYPE_CHECKING:
    import asyncpg


async def file_started(connection: asyncpg.Connection, event: FileStarted) -> bool:
    """pending -> downloading (a resumed download stays downloading); the job is in progress."""
    result = await connection.execute(
        "UPDATE files SET status = 'downloading',"
        " started_at = coalesce(started_at, to_timestamp($3)),"
        " attempts = greatest(attempts, $4), updated_at = now()"
        " WHERE id = $1 AND job_id = $2 AND status IN ('pending', 'downloading')",
        event.file_id,
        event.job_id,
        event.at,
        event.attempt,
    )
    if rows_affected(result):
        await mark_job_in_progress(connection, event.job_id)
    return False  # a start ends nothing


async def file_progress(connection: asyncpg.Connection, event: FileProgress) -> bool:
    # Only while downloading: progress arriving after the file ended must not touch it.
    await connection.execute(
        "UPDATE files SET bytes_downloaded = greatest(bytes_downloaded, $3),"
        " total_bytes = coalesce($4, total_bytes), rate_bps = $5, updated_at = now()"
        " WHERE id = $1 AND job_id = $2 AND status = 'downloading'",
        event.file_id,
        event.job_id,
        event.bytes_downloaded,
        event.total_bytes,
        event.rate_bps,
    )
    return False


async def file_downloaded(connection: asyncpg.Connection, event: FileDownloaded) -> bool:
    """-> completed; queues the file's processing and the composites now complete."""
    result = await connection.execute(
        "UPDATE files SET status = 'completed', filename = $3, filepath = $4, size = $5,"
        " sha256 = $6, content_type = $7, downloaded_at = to_timestamp($8),"
        " bytes_downloaded = $5, total_bytes = $5, rate_bps = NULL, error = NULL,"
        " updated_at = now()"
        " WHERE id = $1 AND job_id = $2 AND status IN ('pending', 'downloading')",
        event.file_id,
        event.job_id,
        event.filename,
        event.filepath,
        event.size,
        event.sha256,
        event.content_type,
        event.at,
    )
    if not rows_affected(result):
        return False
    await after_download(connection, event)
    return True


async def file_failed(connection: asyncpg.Connection, event: FileFailed) -> bool:
    result = await connection.execute(
        "UPDATE files SET status = 'failed', error = $3, attempts = greatest(attempts, $4),"
        " rate_bps = NULL, updated_at = now()"
        " WHERE id = $1 AND job_id = $2 AND status IN ('pending', 'downloading')",
        event.file_id,
        event.job_id,
        event.error,
        event.attempts,
    )
    return bool(rows_affected(result))


PROJECTORS: dict[type, Projector] = {
    FileStarted: Projector(apply=file_started, lock=lock_job_of),
    FileProgress: Projector(apply=file_progress, lock=lock_job_of, claimed=False),
    FileDownloaded: Projector(apply=file_downloaded, lock=lock_job_of, writes_outbox=True),
    FileFailed: Projector(apply=file_failed, lock=lock_job_of, writes_outbox=True),
}
