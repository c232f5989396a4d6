"""Jobs and files as the record knows them: what the queries take and return.

The HTTP side maps these onto its response bodies (jobs/schemas.py); nothing here knows HTTP.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from services.gateway.processing.records import (
    CompositeRecord,
    FileArtifactsRecord,
    ProcessingCounts,
)
from shared.ids import FileId, JobId, UserId
from shared.statuses import ExportStatus, FileStatus, JobStatus


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
    """A completed file (or an artifact with bytes), as needed to serve its bytes."""

    file_id: FileId
    filepath: str
    filename: str
    content_type: str | None
    size: int | None
    sha256: str | None


class FileCounts(msgspec.Struct, frozen=True, kw_only=True):
    total: int
    completed: int
    failed: int
    cancelled: int

    @property
    def open(self) -> int:
        """Files not in a final state yet."""
        return self.total - self.completed - self.failed - self.cancelled


class JobProgress(msgspec.Struct, frozen=True, kw_only=True):
    """File counts of one job; `percentage` counts every file in a final state, and each file's
    processing and each composite when the job asked for them (`processing`, else None)."""

    total: int
    completed: int
    failed: int
    percentage: float
    current_file: str | None
    bytes_downloaded: int
    processing: ProcessingCounts | None = None


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One job with its progress."""

    job_id: JobId
    status: JobStatus
    priority: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    progress: JobProgress
    error: str | None = None


class JobPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a user's jobs, newest first, and how many there are in all."""

    jobs: list[JobRecord]
    page: int
    per_page: int
    total: int


class FileRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a job: where it is stored, its size and SHA-256, and what processing made."""

    file_id: FileId
    url: str
    status: FileStatus
    filepath: str | None
    filename: str | None
    size: int | None
    sha256: str | None
    downloaded_at: datetime | None
    error: str | None = None
    artifacts: FileArtifactsRecord | None = None


class ExportRef(msgspec.Struct, frozen=True, kw_only=True):
    """The automatic export of a job (submit's `export` option)."""

    export_id: str
    status: ExportStatus


class JobResult(msgspec.Struct, frozen=True, kw_only=True):
    """Every file of a job, its automatic export and its composites."""

    job_id: JobId
    status: JobStatus
    files: list[FileRecord]
    export: ExportRef | None = None
    composites: list[CompositeRecord] = []
