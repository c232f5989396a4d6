"""Jobs and files as the API reads and writes them: submit, status, result, listing, cancel.

Every query is scoped to one user and returns the records of jobs/records.py. Writes that
belong together run in one transaction here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.errors import FileNotFound, JobAlreadyEnded, JobNotFound
from services.gateway.jobs.lifecycle import mark_job_cancelled
from services.gateway.jobs.records import (
    ExportRef,
    FileRecord,
    JobPage,
    JobProgress,
    JobRecord,
    JobResult,
    StoredFile,
)
from services.gateway.jobs.submit import submit_job
from services.gateway.processing.queries import file_artifacts, job_composites, stored_artifact
from services.gateway.processing.records import FileArtifactsRecord, ProcessingCounts
from shared.ids import FileId, JobId
from shared.statuses import FINAL_JOB_STATUSES, ExportStatus, FileStatus, JobStatus

if TYPE_CHECKING:
    import asyncpg

    from services.gateway.jobs.records import NewJob, SubmittedJob
    from shared.ids import UserId

# A job's progress from the counters on its row (migration 0007) and one indexed LIMIT 1 look-up
# for its current file: nothing here reads more rows for a job of more files.
_JOB_PROGRESS = """
    j.files_completed AS completed,
    j.files_failed AS failed,
    j.files_completed + j.files_failed + j.files_cancelled AS done,
    j.bytes_downloaded,
    (SELECT coalesce(f.filename, f.requested_name, f.url) FROM files f
      WHERE f.job_id = j.id AND f.status = 'downloading' ORDER BY f.position LIMIT 1)
        AS current_file,
    jsonb_array_length(coalesce(j.options -> 'process', '[]')) > 0 AS wants_processing,
    j.processing_total,
    j.processing_completed,
    j.processing_failed,
    j.processing_completed + j.processing_failed + j.files_failed + j.files_cancelled
        AS processing_done,
    jsonb_array_length(coalesce(j.options -> 'composites', '[]')) AS composites_total,
    (SELECT count(*) FROM composites c WHERE c.job_id = j.id AND c.status = 'completed')
        AS composites_completed,
    (SELECT count(*) FROM composites c WHERE c.job_id = j.id AND c.status = 'failed')
        AS composites_failed
"""

_JOB_COLUMNS = (
    "j.id, j.status, j.priority, j.metadata, j.created_at, j.updated_at, j.error, j.total_files,"
    f" {_JOB_PROGRESS}"
)


class JobRepository:
    """Jobs and files as the API reads and writes them; every query is scoped to one user."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def submit(self, job: NewJob, *, trace_headers: dict[str, str]) -> SubmittedJob:
        """Write the job, its files and one outbox row per file in one transaction.

        A repeated Idempotency-Key of the same user returns the job written the first time and
        writes nothing.
        """
        async with self._pool.acquire() as connection, connection.transaction():
            return await submit_job(connection, job, trace_headers=trace_headers)

    async def job_status(self, user_id: UserId, job_id: JobId) -> JobRecord:
        row = await self._pool.fetchrow(
            f"SELECT {_JOB_COLUMNS} FROM jobs j WHERE j.id = $1 AND j.user_id = $2",
            job_id,
            user_id,
        )
        if row is None:
            raise JobNotFound(job_id)
        return _job_record(row)

    async def list_jobs(
        self, user_id: UserId, *, status: JobStatus | None, page: int, per_page: int
    ) -> JobPage:
        async with self._pool.acquire() as connection, connection.transaction(readonly=True):
            total = await connection.fetchval(
                "SELECT count(*) FROM jobs"
                " WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)",
                user_id,
                status,
            )
            rows = await connection.fetch(
                # The page first, so only its jobs look up their current file.
                f"SELECT {_JOB_COLUMNS} FROM ("
                "  SELECT * FROM jobs WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)"
                "  ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
                ") j ORDER BY j.created_at DESC, j.id DESC",
                user_id,
                status,
                per_page,
                (page - 1) * per_page,
            )
        return JobPage(
            jobs=[_job_record(row) for row in rows], page=page, per_page=per_page, total=total
        )

    async def job_result(self, user_id: UserId, job_id: JobId) -> JobResult:
        async with self._pool.acquire() as connection, connection.transaction(readonly=True):
            status = await connection.fetchval(
                "SELECT status FROM jobs WHERE id = $1 AND user_id = $2", job_id, user_id
            )
            if status is None:
                raise JobNotFound(job_id)
            rows = await connection.fetch(
                "SELECT id, url, status, filepath, filename, size, sha256, downloaded_at, error"
                " FROM files WHERE job_id = $1 ORDER BY position",
                job_id,
            )
            # The job's automatic export (its latest, should a re-driven job have ended twice).
            export = await connection.fetchrow(
                "SELECT id, status FROM exports WHERE job_id = $1 ORDER BY created_at DESC LIMIT 1",
                job_id,
            )
            artifacts = await file_artifacts(connection, job_id)
            composites = await job_composites(connection, job_id)
        return JobResult(
            job_id=job_id,
            status=JobStatus(status),
            files=[_file_record(row, artifacts.get(str(row["id"]))) for row in rows],
            export=None
            if export is None
            else ExportRef(export_id=str(export["id"]), status=ExportStatus(export["status"])),
            composites=composites,
        )

    async def cancel(
        self,
        user_id: UserId,
        job_id: JobId,
        *,
        reason: str | None,
        trace_headers: dict[str, str],
    ) -> None:
        """Mark the job and its unfinished files cancelled, and queue its JobFinished event."""
        async with self._pool.acquire() as connection, connection.transaction():
            # The job row is locked before any of its files, as the tracker does: no deadlock.
            status = await connection.fetchval(
                "SELECT status FROM jobs WHERE id = $1 AND user_id = $2 FOR UPDATE",
                job_id,
                user_id,
            )
            if status is None:
                raise JobNotFound(job_id)
            if status in FINAL_JOB_STATUSES:
                raise JobAlreadyEnded(job_id, status)
            await mark_job_cancelled(
                connection, job_id, reason or "cancelled by the user", headers=trace_headers
            )

    async def stored_file(self, user_id: UserId, file_id: FileId) -> StoredFile:
        row = await self._pool.fetchrow(
            "SELECT f.id, f.status, f.filepath, f.filename, f.content_type, f.size, f.sha256"
            " FROM files f JOIN jobs j ON j.id = f.job_id"
            " WHERE f.id = $1 AND j.user_id = $2",
            file_id,
            user_id,
        )
        if row is None:
            # Artifacts of the processor download by their id through the same route.
            return await stored_artifact(self._pool, user_id, file_id)
        if row["status"] != FileStatus.COMPLETED or not row["filepath"]:
            raise FileNotFound(file_id, f"is not downloaded (status {row['status']})")
        return StoredFile(
            file_id=file_id,
            filepath=row["filepath"],
            filename=row["filename"] or row["filepath"].rsplit("/", 1)[-1],
            content_type=row["content_type"],
            size=row["size"],
            sha256=row["sha256"],
        )


def _job_record(row: asyncpg.Record) -> JobRecord:
    total = row["total_files"]
    processing = _processing_counts(row)
    return JobRecord(
        job_id=JobId(str(row["id"])),
        status=JobStatus(row["status"]),
        priority=row["priority"],
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        progress=JobProgress(
            total=total,
            completed=row["completed"],
            failed=row["failed"],
            percentage=_percentage(row, total, processing),
            current_file=row["current_file"],
            bytes_downloaded=row["bytes_downloaded"],
            processing=processing,
        ),
        error=row["error"],
    )


def _processing_counts(row: asyncpg.Record) -> ProcessingCounts | None:
    if not row["wants_processing"] and not row["composites_total"]:
        return None
    return ProcessingCounts(
        files_total=row["processing_total"],
        files_completed=row["processing_completed"],
        files_failed=row["processing_failed"],
        composites_total=row["composites_total"],
        composites_completed=row["composites_completed"],
        composites_failed=row["composites_failed"],
    )


def _percentage(row: asyncpg.Record, total: int, processing: ProcessingCounts | None) -> float:
    """Every file's download, its processing when asked, and each composite count as a unit."""
    units, done = total, row["done"]
    if processing is not None:
        if row["wants_processing"]:
            units += total
            done += row["processing_done"]
        units += processing.composites_total
        done += processing.composites_completed + processing.composites_failed
    return round(100 * done / units, 1) if units else 100.0


def _file_record(row: asyncpg.Record, artifacts: FileArtifactsRecord | None) -> FileRecord:
    return FileRecord(
        file_id=FileId(str(row["id"])),
        url=row["url"],
        status=FileStatus(row["status"]),
        filepath=row["filepath"],
        filename=row["filename"],
        size=row["size"],
        sha256=row["sha256"],
        downloaded_at=row["downloaded_at"],
        error=row["error"],
        artifacts=artifacts,
    )
