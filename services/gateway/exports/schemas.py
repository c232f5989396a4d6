"""HTTP bodies of /api/v1/downloads/export(s), and their mapping from the record."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import UUID

import msgspec

from services.gateway.jobs.specs import MAX_FILES_PER_JOB
from shared.statuses import ExportStatus

if TYPE_CHECKING:
    from services.gateway.exports.records import CreatedExport, ExportRecord

MAX_EXPORT_SELECTION = 100_000


FilePath = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class ExportCreateRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """POST /api/v1/downloads/export: any mix of jobs, file ids and file paths of the caller."""

    job_ids: Annotated[list[UUID], msgspec.Meta(max_length=MAX_FILES_PER_JOB)] = []
    file_ids: Annotated[list[UUID], msgspec.Meta(max_length=MAX_EXPORT_SELECTION)] = []
    file_paths: Annotated[
        list[FilePath],
        msgspec.Meta(
            max_length=MAX_EXPORT_SELECTION,
            description="`filepath`s as the API returned them (relative to your storage area)",
        ),
    ] = []
    export_format: Literal["zip", "tar.gz"] = "zip"
    include_metadata: Annotated[
        bool,
        msgspec.Meta(description="add manifest.json, SHA256SUMS and a STAC ItemCollection"),
    ] = True

    def __post_init__(self) -> None:
        if not (self.job_ids or self.file_ids or self.file_paths):
            raise ValueError("job_ids, file_ids, file_paths: name at least one thing to export")


class ExportCreateResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer to an export request."""

    export_id: str
    status: ExportStatus
    file_count: int
    total_bytes: int


class ExportProgressView(msgspec.Struct, frozen=True, kw_only=True):
    """How far the archive is: items written and their source bytes."""

    files_done: int
    bytes_done: int
    percentage: float


class ExportStatusResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One export; `size` and `hash` (hex SHA-256) are the archive's once it is ready."""

    export_id: str
    status: ExportStatus
    format: Literal["zip", "tar.gz"]
    include_metadata: bool
    file_count: int
    total_bytes: Annotated[int, msgspec.Meta(description="the items' bytes before compression")]
    progress: ExportProgressView
    size: int | None = None
    hash: str | None = None
    download_url: str | None = None
    error: str | None = None
    job_id: Annotated[
        str | None, msgspec.Meta(description="the job whose automatic export this is")
    ] = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class ExportCancelResponse(msgspec.Struct, frozen=True, kw_only=True):
    export_id: str
    status: ExportStatus


def download_url(export_id: str) -> str:
    return f"/api/v1/downloads/exports/{export_id}/download"


def export_created_response(created: CreatedExport) -> ExportCreateResponse:
    return ExportCreateResponse(
        export_id=created.export_id,
        status=ExportStatus.PENDING,
        file_count=created.file_count,
        total_bytes=created.total_bytes,
    )


def export_status_response(export: ExportRecord) -> ExportStatusResponse:
    total = export.total_bytes
    ready = export.status is ExportStatus.READY
    done = total if ready else min(export.bytes_done, total)
    files = export.file_count if ready else min(export.files_done, export.file_count)
    return ExportStatusResponse(
        export_id=export.export_id,
        status=export.status,
        format=export.format,
        include_metadata=export.include_metadata,
        file_count=export.file_count,
        total_bytes=total,
        progress=ExportProgressView(
            files_done=files,
            bytes_done=done,
            percentage=round(100.0 * done / total, 1) if total else (100.0 if ready else 0.0),
        ),
        size=export.size,
        hash=export.sha256,
        download_url=download_url(export.export_id) if ready else None,
        error=export.error,
        job_id=export.job_id,
        created_at=export.created_at,
        updated_at=export.updated_at,
        finished_at=export.finished_at,
    )
