"""HTTP bodies of /api/v1/downloads jobs: submit, status, result, listing, cancel.

Inputs forbid unknown fields, so a typo in a field name is an error, not a silent default.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from services.gateway.jobs.validation import NUL, NUL_PROBLEM
from services.gateway.processing.schemas import (
    CompositeResult,
    FileArtifacts,
    ProcessingProgress,
    composite_result,
    file_artifacts,
)
from shared.statuses import ExportStatus, FileStatus, JobStatus

if TYPE_CHECKING:
    from services.gateway.jobs.records import (
        ExportRef,
        FileRecord,
        JobPage,
        JobRecord,
        JobResult,
        SubmittedJob,
    )


class SubmitResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer to a submission (also to a repeated one with the same Idempotency-Key)."""

    job_id: str
    status: JobStatus
    created_at: datetime
    queue_position: Annotated[
        int,
        msgspec.Meta(
            description="1 + the files of older jobs still waiting in this job's lane",
        ),
    ]
    estimated_time: Annotated[
        float | None,
        msgspec.Meta(
            description=(
                "seconds until this job's files are done at the throughput of the last 5 "
                "minutes (files ahead in the lane plus this job's); null when no file "
                "finished in that window, since there is nothing to estimate from"
            ),
        ),
    ]
    message: str


# --- status, results, listing ---------------------------------------------------------------


class Progress(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """File counts of one job; `percentage` counts every file in a final state, and each file's
    processing and each composite when the job asked for them (`processing`, else omitted)."""

    total: int
    completed: int
    failed: int
    percentage: float
    current_file: str | None
    bytes_downloaded: int
    processing: ProcessingProgress | None = None


class JobStatusResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus
    priority: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    progress: Progress
    error: str | None = None


class FileResult(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a job; `hash` is the hex SHA-256 of the stored bytes."""

    file_id: str
    url: str
    status: FileStatus
    filepath: str | None
    filename: str | None
    size: int | None
    hash: str | None
    downloaded_at: datetime | None
    error: str | None = None
    artifacts: FileArtifacts | None = None


class ResultSummary(msgspec.Struct, frozen=True, kw_only=True):
    total_requested: int
    successful: int
    failed: int
    total_size: int


class JobResultResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus
    results: list[FileResult]
    summary: ResultSummary
    export: JobExportRef | None = None
    composites: list[CompositeResult] = []


class JobListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One page of the caller's jobs, newest first."""

    jobs: list[JobStatusResponse]
    page: int
    per_page: int
    total: int


class JobExportRef(msgspec.Struct, frozen=True, kw_only=True):
    """The automatic export of a job (submit's `export` option)."""

    export_id: str
    status: ExportStatus
    download_url: str | None = None


# --- cancel ---------------------------------------------------------------------------------


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None

    def __post_init__(self) -> None:
        if self.reason is not None and NUL in self.reason:
            raise ValueError(f"reason: {NUL_PROBLEM}")


class CancelResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus


# --- from the record ------------------------------------------------------------------------


def submit_response(submitted: SubmittedJob, message: str) -> SubmitResponse:
    return SubmitResponse(
        job_id=submitted.job_id,
        status=submitted.status,
        created_at=submitted.created_at,
        queue_position=submitted.queue_position,
        estimated_time=submitted.estimated_time_s,
        message=message,
    )


def job_status_response(job: JobRecord) -> JobStatusResponse:
    # Field for field the record: the response only adds the OpenAPI descriptions.
    return msgspec.convert(job, JobStatusResponse, from_attributes=True)


def job_list_response(page: JobPage) -> JobListResponse:
    return JobListResponse(
        jobs=[job_status_response(job) for job in page.jobs],
        page=page.page,
        per_page=page.per_page,
        total=page.total,
    )


def job_result_response(result: JobResult) -> JobResultResponse:
    files = [_file_result(file) for file in result.files]
    stored = [file for file in files if file.status is FileStatus.COMPLETED]
    return JobResultResponse(
        job_id=result.job_id,
        status=result.status,
        results=files,
        summary=ResultSummary(
            total_requested=len(files),
            successful=len(stored),
            failed=sum(1 for file in files if file.status is FileStatus.FAILED),
            total_size=sum(file.size or 0 for file in stored),
        ),
        export=None if result.export is None else _export_ref(result.export),
        composites=[composite_result(composite) for composite in result.composites],
    )


def _file_result(file: FileRecord) -> FileResult:
    return FileResult(
        file_id=file.file_id,
        url=file.url,
        status=file.status,
        filepath=file.filepath,
        filename=file.filename,
        size=file.size,
        hash=file.sha256,
        downloaded_at=file.downloaded_at,
        error=file.error,
        artifacts=None if file.artifacts is None else file_artifacts(file.artifacts),
    )


def _export_ref(export: ExportRef) -> JobExportRef:
    ready = export.status is ExportStatus.READY
    return JobExportRef(
        export_id=export.export_id,
        status=export.status,
        download_url=f"/api/v1/downloads/exports/{export.export_id}/download" if ready else None,
    )
