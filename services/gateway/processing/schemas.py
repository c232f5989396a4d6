"""HTTP bodies of processing as a job's status and result show it, and their mapping from
the record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

if TYPE_CHECKING:
    from services.gateway.processing.records import (
        ArtifactRecord,
        CompositeRecord,
        FileArtifactsRecord,
    )


class ProcessingProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Processing of a job that asked for it: per-file steps and job-level composites.

    `files_total` counts the files whose processing was queued (once their download ended).
    """

    files_total: int
    files_completed: int
    files_failed: int
    composites_total: int
    composites_completed: int
    composites_failed: int


class ArtifactFile(msgspec.Struct, frozen=True, kw_only=True):
    """An output stored by the processor; its bytes download at `download_url`."""

    file_id: Annotated[str, msgspec.Meta(description="the artifact's id, for /files/{file_id}")]
    kind: str
    filepath: str
    size: int
    hash: str | None
    content_type: str | None
    download_url: str
    metadata: dict[str, Any] | None = None


class FileArtifacts(msgspec.Struct, frozen=True, kw_only=True):
    """What processing made of one file; `errors` names each failed step."""

    status: Literal["pending", "completed", "failed"]
    error: str | None = None
    errors: dict[str, str] = {}
    metadata: dict[str, Any] | None = None
    thumbnail: ArtifactFile | None = None
    cog: ArtifactFile | None = None


class CompositeResult(msgspec.Struct, frozen=True, kw_only=True):
    """One job-level composite and, once completed, its files."""

    composite_id: str
    kind: str
    bands: dict[str, str]
    bounds: list[float] | None = None
    status: Literal["pending", "running", "completed", "failed"]
    error: str | None = None
    artifacts: list[ArtifactFile] = []


def artifact_file(record: ArtifactRecord) -> ArtifactFile:
    return ArtifactFile(
        file_id=record.artifact_id,
        kind=record.kind,
        filepath=record.filepath,
        size=record.size,
        hash=record.sha256,
        content_type=record.content_type,
        download_url=f"/api/v1/downloads/files/{record.artifact_id}",
        metadata=record.metadata,
    )


def file_artifacts(record: FileArtifactsRecord) -> FileArtifacts:
    return FileArtifacts(
        status=record.status,
        error=record.error,
        errors=record.errors,
        metadata=record.metadata,
        thumbnail=None if record.thumbnail is None else artifact_file(record.thumbnail),
        cog=None if record.cog is None else artifact_file(record.cog),
    )


def composite_result(record: CompositeRecord) -> CompositeResult:
    return CompositeResult(
        composite_id=record.composite_id,
        kind=record.kind,
        bands=record.bands,
        bounds=record.bounds,
        status=record.status,
        error=record.error,
        artifacts=[artifact_file(artifact) for artifact in record.artifacts],
    )
