"""The projection of the processor's events: ArtifactCreated, FileProcessed, CompositeFinished.

Each is applied idempotently. A file (or composite) completes once its final event *and* the
artifacts it announces are recorded: the tracker may see them in any order.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from services.gateway.projection import Projector, one_by_one
from shared.composites import ARTIFACTS_OF_COMPOSITE
from shared.events import ArtifactCreated, CompositeFinished, FileProcessed
from shared.postgres import rows_affected

if TYPE_CHECKING:
    import asyncpg

    from shared.ids import FileId, JobId

log = logging.getLogger(__name__)


async def artifact_created(connection: asyncpg.Connection, event: ArtifactCreated) -> bool:
    """Record the artifact; its file or composite may complete with it."""
    if not await _record_artifact(connection, event):
        return False
    if event.file_id is not None:
        return await _complete_file(connection, event.job_id, event.file_id)
    return await _complete_composite(connection, event.job_id, event.composite_id)


async def file_processed(connection: asyncpg.Connection, event: FileProcessed) -> bool:
    await connection.execute(
        "UPDATE files SET processing_errors = $3,"
        " processing_reported_at = to_timestamp($4), updated_at = now()"
        " WHERE id = $1 AND job_id = $2 AND processing_status = 'pending'"
        " AND processing_reported_at IS NULL",
        event.file_id,
        event.job_id,
        event.errors,
        event.at,
    )
    return await _complete_file(connection, event.job_id, event.file_id)


async def composite_finished(connection: asyncpg.Connection, event: CompositeFinished) -> bool:
    await connection.execute(
        "UPDATE composites SET reported_error = $3, reported_at = to_timestamp($4),"
        " updated_at = now()"
        " WHERE id = $1 AND job_id = $2 AND status IN ('pending', 'running')"
        " AND reported_at IS NULL",
        event.composite_id,
        event.job_id,
        event.error,
        event.at,
    )
    return await _complete_composite(connection, event.job_id, event.composite_id)


async def _record_artifact(connection: asyncpg.Connection, event: ArtifactCreated) -> bool:
    """Upsert the artifact (a retried step rewrites the same id); False if it names nothing
    of this job."""
    result = await connection.execute(
        "INSERT INTO artifacts (id, job_id, file_id, composite_id, kind, filepath, size, sha256,"
        " content_type, metadata, created_at)"
        " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11)"
        " WHERE ($3::uuid IS NOT NULL OR $4::uuid IS NOT NULL)"
        " AND ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM files WHERE id = $3 AND job_id = $2))"
        " AND ($4::uuid IS NULL"
        "   OR EXISTS (SELECT 1 FROM composites WHERE id = $4 AND job_id = $2))"
        " ON CONFLICT (id) DO UPDATE SET filepath = EXCLUDED.filepath, size = EXCLUDED.size,"
        " sha256 = EXCLUDED.sha256, content_type = EXCLUDED.content_type,"
        " metadata = EXCLUDED.metadata, created_at = EXCLUDED.created_at",
        event.artifact_id,
        event.job_id,
        event.file_id,
        event.composite_id,
        event.kind,
        event.filepath,
        event.size,
        event.sha256 or None,
        event.content_type,
        event.metadata,
        event.at,
    )
    if not rows_affected(result):
        log.warning(
            "artifact %s names no file or composite of job %s; ignored",
            event.artifact_id,
            event.job_id,
        )
        return False
    return True


async def _complete_file(connection: asyncpg.Connection, job_id: JobId, file_id: FileId) -> bool:
    """Finish the file's processing once it was reported and its artifacts are recorded."""
    row = await connection.fetchrow(
        "SELECT processing_status, processing_steps, processing_errors, processing_reported_at,"
        " (SELECT coalesce(array_agg(kind), '{}') FROM artifacts a WHERE a.file_id = f.id)"
        "   AS kinds"
        " FROM files f WHERE id = $1 AND job_id = $2",
        file_id,
        job_id,
    )
    if row is None or row["processing_status"] != "pending":
        return False
    if row["processing_reported_at"] is None:
        return False
    errors: dict[str, str] = row["processing_errors"] or {}
    expected = {step for step in row["processing_steps"] or () if step not in errors}
    if not expected <= set(row["kinds"]):
        return False  # the ArtifactCreated of a successful step is still on its way
    # In the order the steps ran (jsonb keeps its own key order).
    ordered = [step for step in row["processing_steps"] or () if step in errors]
    ordered += sorted(set(errors) - set(ordered))
    message = "; ".join(f"{step}: {errors[step]}" for step in ordered) or None
    await connection.execute(
        "UPDATE files SET processing_status = $2, processing_error = $3, updated_at = now()"
        " WHERE id = $1 AND processing_status = 'pending'",
        file_id,
        "failed" if errors else "completed",
        message,
    )
    return True


async def _complete_composite(
    connection: asyncpg.Connection, job_id: JobId, composite: str | None
) -> bool:
    """Finish the composite once it was reported and its artifacts are recorded."""
    row = await connection.fetchrow(
        "SELECT kind, status, reported_at, reported_error,"
        " (SELECT coalesce(array_agg(kind), '{}') FROM artifacts a WHERE a.composite_id = c.id)"
        "   AS kinds"
        " FROM composites c WHERE id = $1 AND job_id = $2",
        composite,
        job_id,
    )
    if row is None or row["status"] not in ("pending", "running") or row["reported_at"] is None:
        return False
    error = row["reported_error"]
    expected = set(ARTIFACTS_OF_COMPOSITE.get(row["kind"], ()))
    if error is None and not expected <= set(row["kinds"]):
        return False
    await connection.execute(
        "UPDATE composites SET status = $2, error = $3, finished_at = now(), updated_at = now()"
        " WHERE id = $1 AND status IN ('pending', 'running')",
        composite,
        "failed" if error is not None else "completed",
        error,
    )
    return True


PROJECTORS: dict[type, Projector] = {
    # Rare next to downloads, and a file's processing ends across several events: one by one.
    ArtifactCreated: Projector(apply=one_by_one(artifact_created), writes_outbox=True),
    FileProcessed: Projector(apply=one_by_one(file_processed), writes_outbox=True),
    CompositeFinished: Projector(apply=one_by_one(composite_finished), writes_outbox=True),
}
