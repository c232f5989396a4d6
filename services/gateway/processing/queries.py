"""Processing as a job's result shows it: each file's artifacts, the job's composites, and
the bytes of an artifact."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from services.gateway.errors import FileNotFound
from services.gateway.jobs.records import StoredFile
from services.gateway.processing.records import (
    ArtifactRecord,
    CompositeRecord,
    FileArtifactsRecord,
)
from shared.ids import FileId

if TYPE_CHECKING:
    import asyncpg

    from shared.ids import JobId, UserId

_ARTIFACT_COLUMNS = "id, kind, filepath, size, sha256, content_type, metadata"
_COMPOSITE_NAMESPACE = uuid.UUID("0b7f3c1e-6f1d-4d0e-8a53-7f6c1b2d9e41")


def composite_key(job_id: JobId, position: int) -> str:
    """The id of the `position`-th composite a job asked for (derived, so written once)."""
    return str(uuid.uuid5(_COMPOSITE_NAMESPACE, f"{job_id}/{position}"))


def _artifact(row: asyncpg.Record) -> ArtifactRecord:
    return ArtifactRecord(
        artifact_id=str(row["id"]),
        kind=row["kind"],
        filepath=row["filepath"],
        size=row["size"],
        sha256=row["sha256"],
        content_type=row["content_type"],
        metadata=row["metadata"],
    )


async def file_artifacts(
    connection: asyncpg.Connection, job_id: JobId
) -> dict[str, FileArtifactsRecord]:
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
    views: dict[str, FileArtifactsRecord] = {}
    for file in files:
        kinds = made.get(str(file["id"]), {})
        metadata = kinds.get("metadata")
        views[str(file["id"])] = FileArtifactsRecord(
            status=file["processing_status"],
            error=file["processing_error"],
            errors=file["processing_errors"] or {},
            metadata=metadata["metadata"] if metadata is not None else None,
            thumbnail=_artifact(kinds["thumbnail"]) if "thumbnail" in kinds else None,
            cog=_artifact(kinds["cog"]) if "cog" in kinds else None,
        )
    return views


async def job_composites(connection: asyncpg.Connection, job_id: JobId) -> list[CompositeRecord]:
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
    made: dict[str, list[ArtifactRecord]] = {}
    for row in await connection.fetch(
        f"SELECT composite_id, {_ARTIFACT_COLUMNS} FROM artifacts"
        " WHERE job_id = $1 AND composite_id IS NOT NULL ORDER BY kind",
        job_id,
    ):
        made.setdefault(str(row["composite_id"]), []).append(_artifact(row))
    results = []
    for position, composite in enumerate(asked):
        row = rows.get(position)
        the_id = str(row["id"]) if row is not None else composite_key(job_id, position)
        results.append(
            CompositeRecord(
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
