"""All of the gateway's SQL: tokens, jobs and files, the outbox, and the tracker's projection.

Queries return msgspec Structs (schemas.py for what the API shows, the records below for the
rest). Writes that belong together run in one transaction here, never across modules.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from services.gateway.errors import CannotRedrive, FileNotFound, JobAlreadyEnded, JobNotFound
from services.gateway.schemas import (
    ArtifactFile,
    CompositeResult,
    ExportStatus,
    FileArtifacts,
    FileResult,
    JobExportRef,
    JobListResponse,
    JobResultResponse,
    JobStatusResponse,
    ProcessingProgress,
    Progress,
    ResultSummary,
)
from services.gateway.statuses import FINAL_JOB_STATUSES, FileStatus, JobStatus
from shared.events import ENCODER, DownloadFile, JobFinished
from shared.ids import FileId, JobId, UserId, new_event_id, new_file_id, new_job_id
from shared.streams import EVENTS_STREAM, download_stream, lane_for

if TYPE_CHECKING:
    from shared.events import FileDownloaded, FileFailed, FileProgress, FileStarted

# Errors that mean "PostgreSQL is not reachable right now" rather than "this query is wrong":
# callers wait and retry on these (and the API answers 503), never give the work up.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, "cannot connect now"
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.TransactionRollbackError,  # deadlock or serialization: simply retry
    ConnectionError,
    TimeoutError,
)

# Throughput for estimates is measured over this window.
THROUGHPUT_WINDOW_S = 300

_FINAL_FILE = ("completed", "failed", "cancelled")


# --- records that are not HTTP bodies -------------------------------------------------------


class User(msgspec.Struct, frozen=True, kw_only=True):
    """The caller behind a bearer token."""

    id: UserId
    name: str
    is_admin: bool


class NewFile(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    filename: str | None = None
    sha256: str | None = None


class NewJob(msgspec.Struct, frozen=True, kw_only=True):
    """A validated submission, ready to be written."""

    user_id: UserId
    priority: int
    files: list[NewFile]
    metadata: dict[str, Any] = {}
    options: dict[str, Any] = {}
    idempotency_key: str | None = None
    timeout_s: int | None = None


class SubmittedJob(msgspec.Struct, frozen=True, kw_only=True):
    """A written job and its place in its lane; `existing` when the Idempotency-Key matched."""

    job_id: JobId
    status: JobStatus
    created_at: datetime
    queue_position: int
    estimated_time_s: float | None
    existing: bool


class StoredFile(msgspec.Struct, frozen=True, kw_only=True):
    """A completed file, as needed to serve its bytes."""

    file_id: FileId
    filepath: str
    filename: str
    content_type: str | None
    size: int | None
    sha256: str | None


class OutboxRow(msgspec.Struct, frozen=True, kw_only=True):
    """One message to publish; `command_key` is set on the commands the reconciler keeps alive
    (the relay marks each live under it)."""

    id: int
    stream: str
    body: bytes
    headers: dict[str, str]
    command_key: str | None = None


class FileCounts(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    completed: int
    failed: int
    cancelled: int

    @property
    def open(self) -> int:
        """Files not in a final state yet."""
        return self.total - self.completed - self.failed - self.cancelled


# --- tokens ---------------------------------------------------------------------------------


async def save_token(pool: asyncpg.Pool, name: str, *, admin: bool, token_hash: bytes) -> UserId:
    """Create the user `name` if missing (setting its admin flag either way) and add a token."""
    async with pool.acquire() as connection, connection.transaction():
        user_id = await connection.fetchval(
            "INSERT INTO users (id, name, is_admin) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET is_admin = EXCLUDED.is_admin"
            " RETURNING id",
            uuid.uuid4(),
            name,
            admin,
        )
        await connection.execute(
            "INSERT INTO api_tokens (token_hash, user_id) VALUES ($1, $2)", token_hash, user_id
        )
    return UserId(str(user_id))


async def user_for_token(pool: asyncpg.Pool, token_hash: bytes) -> User | None:
    row = await pool.fetchrow(
        "SELECT u.id, u.name, u.is_admin FROM api_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        token_hash,
    )
    if row is None:
        return None
    return User(id=UserId(str(row["id"])), name=row["name"], is_admin=row["is_admin"])


# --- jobs: the HTTP side --------------------------------------------------------------------

# Per-job aggregates over its files; joined LATERAL onto one job or a page of them.
_JOB_PROGRESS = """
    count(*) FILTER (WHERE f.status = 'completed') AS completed,
    count(*) FILTER (WHERE f.status = 'failed') AS failed,
    count(*) FILTER (WHERE f.status IN ('completed', 'failed', 'cancelled')) AS done,
    coalesce(sum(f.bytes_downloaded), 0)::bigint AS bytes_downloaded,
    (array_agg(coalesce(f.filename, f.requested_name, f.url) ORDER BY f.position)
        FILTER (WHERE f.status = 'downloading'))[1] AS current_file,
    jsonb_array_length(coalesce(j.options -> 'process', '[]')) > 0 AS wants_processing,
    count(*) FILTER (WHERE f.processing_status IS NOT NULL) AS processing_total,
    count(*) FILTER (WHERE f.processing_status = 'completed') AS processing_completed,
    count(*) FILTER (WHERE f.processing_status = 'failed') AS processing_failed,
    count(*) FILTER (WHERE f.processing_status IN ('completed', 'failed')
        OR f.status IN ('failed', 'cancelled')) AS processing_done,
    jsonb_array_length(coalesce(j.options -> 'composites', '[]')) AS composites_total,
    (SELECT count(*) FROM composites c WHERE c.job_id = j.id AND c.status = 'completed')
        AS composites_completed,
    (SELECT count(*) FROM composites c WHERE c.job_id = j.id AND c.status = 'failed')
        AS composites_failed
"""

_JOB_COLUMNS = (
    "j.id, j.status, j.priority, j.metadata, j.created_at, j.updated_at, j.error, j.total_files"
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
        lane_priorities = _lane_priorities(job.priority)
        stream = download_stream(lane_for(job.priority))
        job_id = new_job_id()
        file_ids = [new_file_id() for _ in job.files]
        bodies = [
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
        async with self._pool.acquire() as connection, connection.transaction():
            # ON CONFLICT waits for a concurrent insert of the same key to commit, so two racing
            # submissions with one key still end up with one job.
            row = await connection.fetchrow(
                "INSERT INTO jobs (id, user_id, priority, metadata, options, idempotency_key,"
                " total_files, timeout_s) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (user_id, idempotency_key) DO NOTHING"
                " RETURNING id, status, created_at",
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
                lane_priorities = _lane_priorities(row["priority"])
                own_open = await connection.fetchval(
                    "SELECT count(*) FROM files WHERE job_id = $1"
                    " AND status IN ('pending', 'downloading')",
                    job_id,
                )
            else:
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
                # A download command's key is its file id (see DOWNLOADS).
                await connection.execute(
                    "INSERT INTO outbox (stream, body, headers, file_id, command_key)"
                    " SELECT $1, o.body, $3::jsonb, o.file_id, o.file_id::text"
                    " FROM unnest($2::bytea[], $4::uuid[]) WITH ORDINALITY AS o(body, file_id, n)"
                    " ORDER BY n",
                    stream,
                    bodies,
                    trace_headers,
                    file_ids,
                )
                own_open = len(job.files)
            ahead = await connection.fetchval(
                "SELECT count(*) FROM files f JOIN jobs j ON j.id = f.job_id"
                " WHERE f.status = 'pending' AND j.priority = ANY($1::smallint[])"
                " AND (j.created_at, j.id) < ($2, $3)",
                lane_priorities,
                row["created_at"],
                job_id,
            )
            done_recently = await connection.fetchval(
                "SELECT count(*) FROM files"
                " WHERE downloaded_at > now() - make_interval(secs => $1)",
                float(THROUGHPUT_WINDOW_S),
            )
        rate_per_s = done_recently / THROUGHPUT_WINDOW_S
        estimate = round((ahead + own_open) / rate_per_s, 1) if rate_per_s > 0 else None
        return SubmittedJob(
            job_id=job_id,
            status=JobStatus(row["status"]),
            created_at=row["created_at"],
            queue_position=ahead + 1,
            estimated_time_s=estimate,
            existing=existing,
        )

    async def job_status(self, user_id: UserId, job_id: JobId) -> JobStatusResponse:
        row = await self._pool.fetchrow(
            f"SELECT {_JOB_COLUMNS}, p.* FROM jobs j"
            f" CROSS JOIN LATERAL (SELECT {_JOB_PROGRESS} FROM files f WHERE f.job_id = j.id) p"
            " WHERE j.id = $1 AND j.user_id = $2",
            job_id,
            user_id,
        )
        if row is None:
            raise JobNotFound(job_id)
        return _job_status(row)

    async def list_jobs(
        self, user_id: UserId, *, status: JobStatus | None, page: int, per_page: int
    ) -> JobListResponse:
        async with self._pool.acquire() as connection, connection.transaction(readonly=True):
            total = await connection.fetchval(
                "SELECT count(*) FROM jobs"
                " WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)",
                user_id,
                status,
            )
            rows = await connection.fetch(
                f"SELECT {_JOB_COLUMNS}, p.* FROM ("
                "  SELECT * FROM jobs WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)"
                "  ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
                ") j CROSS JOIN LATERAL"
                f" (SELECT {_JOB_PROGRESS} FROM files f WHERE f.job_id = j.id) p"
                " ORDER BY j.created_at DESC, j.id DESC",
                user_id,
                status,
                per_page,
                (page - 1) * per_page,
            )
        return JobListResponse(
            jobs=[_job_status(row) for row in rows], page=page, per_page=per_page, total=total
        )

    async def job_result(self, user_id: UserId, job_id: JobId) -> JobResultResponse:
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
        results = [
            FileResult(
                file_id=str(row["id"]),
                url=row["url"],
                status=FileStatus(row["status"]),
                filepath=row["filepath"],
                filename=row["filename"],
                size=row["size"],
                hash=row["sha256"],
                downloaded_at=row["downloaded_at"],
                error=row["error"],
                artifacts=artifacts.get(str(row["id"])),
            )
            for row in rows
        ]
        stored = [r for r in results if r.status is FileStatus.COMPLETED]
        return JobResultResponse(
            job_id=job_id,
            status=JobStatus(status),
            results=results,
            summary=ResultSummary(
                total_requested=len(results),
                successful=len(stored),
                failed=sum(1 for r in results if r.status is FileStatus.FAILED),
                total_size=sum(r.size or 0 for r in stored),
            ),
            export=_export_ref(export),
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
            await connection.execute(
                "UPDATE jobs SET status = 'cancelled', error = $2, finished_at = now(),"
                " updated_at = now() WHERE id = $1",
                job_id,
                reason or "cancelled by the user",
            )
            await connection.execute(
                "UPDATE files SET status = 'cancelled', updated_at = now()"
                " WHERE job_id = $1 AND status IN ('pending', 'downloading')",
                job_id,
            )
            counts = await file_counts(connection, job_id)
            await add_to_outbox(
                connection,
                EVENTS_STREAM,
                ENCODER.encode(
                    JobFinished(
                        event_id=new_event_id(),
                        job_id=job_id,
                        at=time.time(),
                        status=JobStatus.CANCELLED,
                        successful=counts.completed,
                        failed=counts.failed + counts.cancelled,
                    )
                ),
                headers=trace_headers,
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


def _lane_priorities(priority: int) -> list[int]:
    lane = lane_for(priority)
    return [p for p in range(1, 11) if lane_for(p) is lane]


def _job_status(row: asyncpg.Record) -> JobStatusResponse:
    total = row["total_files"]
    processing = _processing_progress(row)
    return JobStatusResponse(
        job_id=str(row["id"]),
        status=JobStatus(row["status"]),
        priority=row["priority"],
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        progress=Progress(
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


def _export_ref(row: asyncpg.Record | None) -> JobExportRef | None:
    if row is None:
        return None
    export_id = str(row["id"])
    ready = row["status"] == "ready"
    return JobExportRef(
        export_id=export_id,
        status=ExportStatus(row["status"]),
        download_url=f"/api/v1/downloads/exports/{export_id}/download" if ready else None,
    )


# --- the outbox -----------------------------------------------------------------------------


async def add_to_outbox(
    connection: asyncpg.Connection,
    stream: str,
    body: bytes,
    *,
    headers: dict[str, str],
    command_key: str | None = None,
    file_id: FileId | None = None,
) -> None:
    """Queue one message.

    Args:
        command_key: the work a reconciled command is for (`CommandKind.key`); None for events.
        file_id: the file a download command is for.
    """
    await connection.execute(
        "INSERT INTO outbox (stream, body, headers, command_key, file_id)"
        " VALUES ($1, $2, $3, $4, $5)",
        stream,
        body,
        headers,
        command_key,
        file_id,
    )


async def claim_outbox(connection: asyncpg.Connection, limit: int) -> list[OutboxRow]:
    """Lock the oldest unsent rows; other relays skip them until this transaction ends."""
    rows = await connection.fetch(
        "SELECT id, stream, body, headers, command_key FROM outbox WHERE sent_at IS NULL"
        " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [
        OutboxRow(
            id=r["id"],
            stream=r["stream"],
            body=r["body"],
            headers=r["headers"] or {},
            command_key=r["command_key"],
        )
        for r in rows
    ]


async def mark_sent(connection: asyncpg.Connection, ids: Sequence[int]) -> None:
    await connection.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", ids)


async def purge_sent(pool: asyncpg.Pool, *, outbox_age_s: float, events_age_s: float) -> None:
    """Forget sent outbox rows and old processed-event ids; both only grow otherwise."""
    async with pool.acquire() as connection:
        await connection.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)", outbox_age_s
        )
        await connection.execute(
            "DELETE FROM processed_events WHERE processed_at < now() - make_interval(secs => $1)",
            events_age_s,
        )


# --- the tracker's projection ---------------------------------------------------------------
# Every UPDATE below names the states it may leave, so state only moves forward:
# pending -> downloading -> completed | failed | cancelled, and a final state never changes.


async def claim_event(connection: asyncpg.Connection, event_id: str) -> bool:
    """Record `event_id` as processed; False when it already was (a replay)."""
    inserted = await connection.fetchval(
        "INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
        event_id,
    )
    return bool(inserted)


async def lock_job(connection: asyncpg.Connection, job_id: JobId) -> JobStatus | None:
    """Lock the job row for the rest of the transaction; None when there is no such job."""
    status = await connection.fetchval("SELECT status FROM jobs WHERE id = $1 FOR UPDATE", job_id)
    return None if status is None else JobStatus(status)


async def mark_job_in_progress(connection: asyncpg.Connection, job_id: JobId) -> None:
    await connection.execute(
        "UPDATE jobs SET status = 'in_progress', updated_at = now()"
        " WHERE id = $1 AND status = 'pending'",
        job_id,
    )


async def file_started(connection: asyncpg.Connection, event: FileStarted) -> bool:
    """pending -> downloading (a resumed download stays downloading); False if it moved on."""
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
    return _changed(result)


async def file_progress(connection: asyncpg.Connection, event: FileProgress) -> None:
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


async def file_downloaded(connection: asyncpg.Connection, event: FileDownloaded) -> bool:
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
    return _changed(result)


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
    return _changed(result)


async def file_counts(connection: asyncpg.Connection, job_id: JobId) -> FileCounts:
    row = await connection.fetchrow(
        "SELECT count(*) AS total,"
        " count(*) FILTER (WHERE status = 'completed') AS completed,"
        " count(*) FILTER (WHERE status = 'failed') AS failed,"
        " count(*) FILTER (WHERE status = 'cancelled') AS cancelled"
        " FROM files WHERE job_id = $1",
        job_id,
    )
    return FileCounts(
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        cancelled=row["cancelled"],
    )


async def finish_job(connection: asyncpg.Connection, job_id: JobId, status: JobStatus) -> None:
    await connection.execute(
        "UPDATE jobs SET status = $2, finished_at = now(), updated_at = now()"
        " WHERE id = $1 AND finished_at IS NULL",
        job_id,
        status,
    )


def _changed(command_status: str) -> bool:
    # asyncpg answers an UPDATE with its command tag, e.g. "UPDATE 1".
    return command_status.rsplit(" ", 1)[-1] != "0"


# --- the reconciler -------------------------------------------------------------------------
# It re-publishes work Redis lost and ends jobs past their timeout; PostgreSQL stays the record.
# Each kind of command it keeps alive is one CommandKind: its queries, registered with the
# reconciler (services.gateway.reconciler.COMMAND_KINDS). The SQL helpers below are theirs.


class QueuedCommand(msgspec.Struct, frozen=True, kw_only=True):
    """A command of unfinished work, rebuilt from PostgreSQL to be published again.

    Attributes:
        subject_id: the row the work fills (a file, a composite, an export); batches page by it.
        key: the command key: its outbox rows and its live marker are found by it.
        stream: where it goes.
        body: the command as its consumer decodes it.
        file_id: the file of a download command (its outbox rows carry it too).
    """

    subject_id: str
    key: str
    stream: str
    body: bytes
    file_id: FileId | None = None


# (connection, after subject id or None, limit) -> a batch ordered by subject id.
SentQuery = Callable[[asyncpg.Connection, str | None, int], Awaitable[list[QueuedCommand]]]
# (connection, stale_s, limit) -> started work silent for stale_s, not re-queued within it.
StaleQuery = Callable[[asyncpg.Connection, float, int], Awaitable[list[QueuedCommand]]]
# (connection, subject ids) -> those still open, their rows locked until the transaction ends.
OpenQuery = Callable[[asyncpg.Connection, Sequence[str]], Awaitable[set[str]]]


@dataclass(frozen=True, slots=True)
class CommandKind:
    """One kind of command whose work PostgreSQL tracks, and that the reconciler keeps alive.

    Attributes:
        name: what reports and logs call it.
        key_prefix: a command key is this prefix and the subject id.
        sent: open work whose command left the outbox (no row of its key waits unsent); the
            reconciler publishes again those whose live marker Redis lost.
        still_open: the re-check inside the transaction that queues them again.
        stale: started work with no sign of life for `stale_s`, or None where long silence is
            normal (processing reports nothing until a step ends).
    """

    name: str
    key_prefix: str
    sent: SentQuery
    still_open: OpenQuery
    stale: StaleQuery | None = None

    def key(self, subject_id: str) -> str:
        return f"{self.key_prefix}{subject_id}"


def no_row_waiting(key_sql: str) -> str:
    """SQL: no outbox row for the command key `key_sql` waits unsent (so its command left)."""
    return (
        f"NOT EXISTS (SELECT 1 FROM outbox o WHERE o.command_key = {key_sql} AND o.sent_at IS NULL)"
    )


def not_queued_within(key_sql: str, seconds_sql: str) -> str:
    """SQL: no outbox row for the key waits, nor was one written in the last `seconds_sql`."""
    # A row written within the window is our own earlier re-publish still on its way (a deep
    # lane can hold it for long): publishing on every pass would pile up duplicates.
    return (
        f"NOT EXISTS (SELECT 1 FROM outbox o WHERE o.command_key = {key_sql}"
        f" AND (o.sent_at IS NULL OR o.created_at > now() - make_interval(secs => {seconds_sql})))"
    )


async def requeue(
    connection: asyncpg.Connection,
    kind: CommandKind,
    commands: Sequence[QueuedCommand],
    *,
    headers: dict[str, str],
) -> int:
    """Queue each command again whose work is still open and has no row waiting; how many.

    The kind's conditions are checked again here under row locks, so work that moved on since
    it was read is skipped and cannot complete before this commits. Rows another transaction
    holds are skipped rather than waited for (no deadlock with the tracker's lock order): that
    work is moving right now, and the next pass looks again.
    """
    if not commands:
        return 0
    still_open = await kind.still_open(connection, [c.subject_id for c in commands])
    chosen = [c for c in commands if c.subject_id in still_open]
    if not chosen:
        return 0
    result = await connection.execute(
        "INSERT INTO outbox (stream, body, headers, command_key, file_id)"
        " SELECT u.stream, u.body, $5::jsonb, u.key, u.file_id"
        " FROM unnest($1::text[], $2::bytea[], $3::text[], $4::uuid[]) WITH ORDINALITY"
        "   AS u(stream, body, key, file_id, n)"
        f" WHERE {no_row_waiting('u.key')}"
        " ORDER BY u.n",
        [c.stream for c in chosen],
        [c.body for c in chosen],
        [c.key for c in chosen],
        [c.file_id for c in chosen],
        headers,
    )
    return int(result.rsplit(" ", 1)[-1])


# Downloads: a command is rebuilt from the file and its job exactly as submit() wrote it.
_DOWNLOAD_COLUMNS = (
    "f.id, f.job_id, f.url, f.requested_name, f.expected_sha256, j.user_id, j.priority"
)


async def _downloads_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[QueuedCommand]:
    """Pending files of unfinished jobs with no outbox row waiting, in file-id order."""
    rows = await connection.fetch(
        f"SELECT {_DOWNLOAD_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.status = 'pending' AND j.finished_at IS NULL"
        " AND ($1::uuid IS NULL OR f.id > $1)"
        f" AND {no_row_waiting('f.id::text')}"
        " ORDER BY f.id LIMIT $2",
        after,
        limit,
    )
    return [_queued_download(row) for row in rows]


async def _downloads_stale(
    connection: asyncpg.Connection, stale_s: float, limit: int
) -> list[QueuedCommand]:
    """Downloading files with no event for `stale_s` and not re-published within it either."""
    rows = await connection.fetch(
        f"SELECT {_DOWNLOAD_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.status = 'downloading' AND j.finished_at IS NULL"
        " AND f.updated_at < now() - make_interval(secs => $1)"
        f" AND {not_queued_within('f.id::text', '$1')}"
        " ORDER BY f.updated_at LIMIT $2",
        stale_s,
        limit,
    )
    return [_queued_download(row) for row in rows]


async def _downloads_open(connection: asyncpg.Connection, file_ids: Sequence[str]) -> set[str]:
    rows = await connection.fetch(
        "SELECT f.id FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.id = ANY($1::uuid[]) AND f.status IN ('pending', 'downloading')"
        " AND j.finished_at IS NULL FOR UPDATE OF f SKIP LOCKED",
        file_ids,
    )
    return {str(row["id"]) for row in rows}


def _queued_download(row: asyncpg.Record) -> QueuedCommand:
    command = DownloadFile(
        job_id=JobId(str(row["job_id"])),
        file_id=FileId(str(row["id"])),
        user_id=UserId(str(row["user_id"])),
        url=row["url"],
        filename=row["requested_name"],
        sha256=row["expected_sha256"],
        priority=row["priority"],
    )
    return QueuedCommand(
        subject_id=command.file_id,
        key=DOWNLOADS.key(command.file_id),
        stream=download_stream(lane_for(command.priority)),
        body=ENCODER.encode(command),
        file_id=command.file_id,
    )


# A download's key is its bare file id: the live markers already in Redis carry that name.
DOWNLOADS = CommandKind(
    name="download",
    key_prefix="",
    sent=_downloads_sent,
    still_open=_downloads_open,
    stale=_downloads_stale,
)


class TimedOutJob(msgspec.Struct, frozen=True, kw_only=True):
    job_id: JobId
    timeout_s: int


# Still unfinished and past its timeout, counted from its creation or its last re-drive.
_PAST_TIMEOUT = (
    "finished_at IS NULL AND status IN ('pending', 'in_progress')"
    " AND coalesce(reopened_at, created_at)"
    " < now() - make_interval(secs => coalesce(timeout_s, $1))"
)


async def timed_out_jobs(
    connection: asyncpg.Connection, *, default_timeout_s: float, limit: int
) -> list[TimedOutJob]:
    """Unfinished jobs older than their timeout (their own, else the default), oldest first."""
    rows = await connection.fetch(
        "SELECT id, coalesce(timeout_s, $1)::bigint AS timeout_s FROM jobs"
        f" WHERE {_PAST_TIMEOUT} ORDER BY created_at LIMIT $2",
        default_timeout_s,
        limit,
    )
    return [TimedOutJob(job_id=JobId(str(r["id"])), timeout_s=r["timeout_s"]) for r in rows]


async def lock_timed_out_job(
    connection: asyncpg.Connection, job_id: JobId, *, default_timeout_s: float
) -> JobStatus | None:
    """Lock the job if it is still past its timeout; None when it ended or was re-driven since."""
    status = await connection.fetchval(
        f"SELECT status FROM jobs WHERE id = $2 AND {_PAST_TIMEOUT} FOR UPDATE",
        default_timeout_s,
        job_id,
    )
    return None if status is None else JobStatus(status)


async def fail_open_files(connection: asyncpg.Connection, job_id: JobId, error: str) -> int:
    """Fail every file of the job that has not ended, and give the job the same error."""
    result = await connection.execute(
        "UPDATE files SET status = 'failed', error = $2, rate_bps = NULL, updated_at = now()"
        " WHERE job_id = $1 AND status IN ('pending', 'downloading')",
        job_id,
        error,
    )
    await connection.execute(
        "UPDATE jobs SET error = $2, updated_at = now() WHERE id = $1", job_id, error
    )
    return int(result.rsplit(" ", 1)[-1])


# --- re-driving dead letters ----------------------------------------------------------------


async def reopen_for_redrive(
    pool: asyncpg.Pool,
    command: DownloadFile,
    *,
    stream: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """Reopen the command's file (and its job, if it ended) and queue the command again.

    One transaction: either the file is pending again with its command in the outbox, or
    nothing changed. Raises JobNotFound/FileNotFound, or CannotRedrive for a cancelled job
    or a file that was stored after all.
    """
    async with pool.acquire() as connection, connection.transaction():
        # The job first, then its file: the lock order of the tracker and of cancellation.
        status = await lock_job(connection, command.job_id)
        if status is None:
            raise JobNotFound(command.job_id)
        if status is JobStatus.CANCELLED:
            raise CannotRedrive(f"job {command.job_id} was cancelled; its files stay cancelled")
        file_status = await connection.fetchval(
            "SELECT status FROM files WHERE id = $1 AND job_id = $2 FOR UPDATE",
            command.file_id,
            command.job_id,
        )
        if file_status is None:
            raise FileNotFound(command.file_id)
        if file_status in ("completed", "cancelled"):
            raise CannotRedrive(f"file {command.file_id} is {file_status}; nothing to re-drive")
        # `attempts` stays: it is the history of tries, and the new command starts at try 1.
        await connection.execute(
            "UPDATE files SET status = 'pending', error = NULL, rate_bps = NULL,"
            " updated_at = now() WHERE id = $1",
            command.file_id,
        )
        # An ended job runs again; either way its timeout counts from now, or an old job would
        # time out again at the reconciler's next pass, before the work had a chance.
        await connection.execute(
            "UPDATE jobs SET reopened_at = now(), updated_at = now(),"
            " status = CASE WHEN $2 THEN 'in_progress' ELSE status END,"
            " finished_at = CASE WHEN $2 THEN NULL ELSE finished_at END,"
            " error = CASE WHEN $2 THEN NULL ELSE error END"
            " WHERE id = $1",
            command.job_id,
            status in FINAL_JOB_STATUSES,
        )
        await add_to_outbox(
            connection,
            stream,
            body,
            headers=headers,
            command_key=DOWNLOADS.key(command.file_id),
            file_id=command.file_id,
        )


# --- processing: progress, artifacts and composites as the API shows them --------------------

_ARTIFACT_COLUMNS = "id, kind, filepath, size, sha256, content_type, metadata"


def _processing_progress(row: asyncpg.Record) -> ProcessingProgress | None:
    if not row["wants_processing"] and not row["composites_total"]:
        return None
    return ProcessingProgress(
        files_total=row["processing_total"],
        files_completed=row["processing_completed"],
        files_failed=row["processing_failed"],
        composites_total=row["composites_total"],
        composites_completed=row["composites_completed"],
        composites_failed=row["composites_failed"],
    )


def _percentage(row: asyncpg.Record, total: int, processing: ProcessingProgress | None) -> float:
    """Every file's download, its processing when asked, and each composite count as a unit."""
    units, done = total, row["done"]
    if processing is not None:
        if row["wants_processing"]:
            units += total
            done += row["processing_done"]
        units += processing.composites_total
        done += processing.composites_completed + processing.composites_failed
    return round(100 * done / units, 1) if units else 100.0


def _artifact_file(row: asyncpg.Record) -> ArtifactFile:
    artifact_id = str(row["id"])
    return ArtifactFile(
        file_id=artifact_id,
        kind=row["kind"],
        filepath=row["filepath"],
        size=row["size"],
        hash=row["sha256"],
        content_type=row["content_type"],
        download_url=f"/api/v1/downloads/files/{artifact_id}",
        metadata=row["metadata"],
    )


async def file_artifacts(connection: asyncpg.Connection, job_id: JobId) -> dict[str, FileArtifacts]:
    """file id -> what processing made of it, for the files whose processing was queued."""
    files = await connection.fetch(
        "SELECT id, processing_status, processing_error, processing_errors FROM files"
        " WHERE job_id = $1 AND processing_status IS NOT NULL",
        job_id,
    )
    if not files:
        return {}
    made: dict[str, dict[str, asyncpg.Record]] = {}
    for row in await connection.fetch(
        f"SELECT file_id, {_ARTIFACT_COLUMNS} FROM artifacts"
        " WHERE job_id = $1 AND file_id IS NOT NULL",
        job_id,
    ):
        made.setdefault(str(row["file_id"]), {})[row["kind"]] = row
    views: dict[str, FileArtifacts] = {}
    for file in files:
        kinds = made.get(str(file["id"]), {})
        metadata = kinds.get("metadata")
        views[str(file["id"])] = FileArtifacts(
            status=file["processing_status"],
            error=file["processing_error"],
            errors=file["processing_errors"] or {},
            metadata=metadata["metadata"] if metadata is not None else None,
            thumbnail=_artifact_file(kinds["thumbnail"]) if "thumbnail" in kinds else None,
            cog=_artifact_file(kinds["cog"]) if "cog" in kinds else None,
        )
    return views


async def job_composites(connection: asyncpg.Connection, job_id: JobId) -> list[CompositeResult]:
    """The job's composites in the order asked; those not written yet show as pending."""
    options = await connection.fetchval("SELECT options FROM jobs WHERE id = $1", job_id) or {}
    asked = options.get("composites") or []
    if not asked:
        return []
    rows = {
        row["position"]: row
        for row in await connection.fetch(
            "SELECT id, position, status, error FROM composites WHERE job_id = $1", job_id
        )
    }
    made: dict[str, list[ArtifactFile]] = {}
    for row in await connection.fetch(
        f"SELECT composite_id, {_ARTIFACT_COLUMNS} FROM artifacts"
        " WHERE job_id = $1 AND composite_id IS NOT NULL ORDER BY kind",
        job_id,
    ):
        made.setdefault(str(row["composite_id"]), []).append(_artifact_file(row))
    results = []
    for position, composite in enumerate(asked):
        row = rows.get(position)
        the_id = str(row["id"]) if row is not None else composite_key(job_id, position)
        results.append(
            CompositeResult(
                composite_id=the_id,
                kind=composite["kind"],
                bands=composite["bands"],
                bounds=composite.get("bounds"),
                status=row["status"] if row is not None else "pending",
                error=row["error"] if row is not None else None,
                artifacts=made.get(the_id, []),
            )
        )
    return results


def composite_key(job_id: JobId, position: int) -> str:
    """The id of the `position`-th composite a job asked for (derived, so written once)."""
    return str(uuid.uuid5(_COMPOSITE_NAMESPACE, f"{job_id}/{position}"))


_COMPOSITE_NAMESPACE = uuid.UUID("0b7f3c1e-6f1d-4d0e-8a53-7f6c1b2d9e41")


async def stored_artifact(pool: asyncpg.Pool, user_id: UserId, artifact_id: str) -> StoredFile:
    """An artifact with bytes, as a StoredFile, if it belongs to one of the user's jobs."""
    row = await pool.fetchrow(
        "SELECT a.filepath, a.content_type, a.size, a.sha256"
        " FROM artifacts a JOIN jobs j ON j.id = a.job_id"
        " WHERE a.id = $1 AND j.user_id = $2",
        artifact_id,
        user_id,
    )
    if row is None:
        raise FileNotFound(artifact_id)
    if not row["filepath"]:
        raise FileNotFound(artifact_id, "has no bytes (it is data in the job result)")
    return StoredFile(
        file_id=FileId(artifact_id),
        filepath=row["filepath"],
        filename=row["filepath"].rsplit("/", 1)[-1],
        content_type=row["content_type"],
        size=row["size"],
        sha256=row["sha256"],
    )
