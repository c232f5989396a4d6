"""What processing queues after a download, and what a job's end waits for.

- After a FileDownloaded of a job that asked for `process` steps: the file's processing is
  pending and its ProcessFile command goes to the outbox, in the tracker's transaction.
- Composites fan in: each is queued (BuildComposite, once) when every band it names is
  downloaded, and fails when one of them ended without bytes.
- `open_work` tells the job's end rule whether processing still holds the job open.

The caller holds the job's lock throughout.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from services.gateway.outbox import add_to_outbox
from services.gateway.processing.commands import FILE_PROCESSING, queued_composite
from services.gateway.processing.queries import composite_key
from shared.composites import COMPOSITE_ROLES, match_band
from shared.events import ENCODER, ProcessFile, ProcessStep
from shared.ids import UserId
from shared.postgres import rows_affected
from shared.streams import lane_for, process_stream
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    import asyncpg

    from shared.events import FileDownloaded
    from shared.ids import JobId

log = logging.getLogger(__name__)


class _Job(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UserId
    priority: int
    steps: tuple[ProcessStep, ...]
    composites: list[dict[str, Any]]
    error: str | None


async def _job(connection: asyncpg.Connection, job_id: JobId) -> _Job | None:
    row = await connection.fetchrow(
        "SELECT user_id, priority, options, error FROM jobs WHERE id = $1", job_id
    )
    if row is None:
        return None
    options = row["options"] or {}
    return _Job(
        user_id=UserId(str(row["user_id"])),
        priority=row["priority"],
        # Each step once, in the order asked (validated at submit).
        steps=msgspec.convert(
            tuple(dict.fromkeys(options.get("process") or ())), tuple[ProcessStep, ...]
        ),
        composites=list(options.get("composites") or ()),
        error=row["error"],
    )


async def after_download(connection: asyncpg.Connection, event: FileDownloaded) -> None:
    """Queue the file's processing and any composite whose bands are now all in."""
    job = await _job(connection, event.job_id)
    if job is None:
        return
    if job.steps:
        await _queue_file(connection, event, job)
    if job.composites:
        await _advance_composites(connection, event.job_id, job)


async def _queue_file(connection: asyncpg.Connection, event: FileDownloaded, job: _Job) -> None:
    result = await connection.execute(
        "UPDATE files SET processing_status = 'pending', processing_steps = $3,"
        " updated_at = now()"
        " WHERE id = $1 AND job_id = $2 AND processing_status IS NULL",
        event.file_id,
        event.job_id,
        list(job.steps),
    )
    if not rows_affected(result):
        return
    command = ProcessFile(
        job_id=event.job_id,
        file_id=event.file_id,
        user_id=job.user_id,
        filepath=event.filepath,
        filename=event.filename,
        steps=job.steps,
        priority=job.priority,
    )
    await add_to_outbox(
        connection,
        process_stream(lane_for(job.priority)),
        ENCODER.encode(command),
        headers=trace_headers(),
        command_key=FILE_PROCESSING.key(event.file_id),
    )


async def open_work(connection: asyncpg.Connection, job_id: JobId) -> bool:
    """Whether processing still holds the job open.

    Composites whose bands can no longer arrive fail here; a job given an error (it timed
    out) waits for nothing any more: its open processing fails with that error.
    """
    job = await _job(connection, job_id)
    if job is None or not (job.steps or job.composites):
        return False
    if job.error is not None:
        await _abandon(connection, job_id, job)
        return False
    if job.composites:
        await _advance_composites(connection, job_id, job)
    still_open: bool = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM files WHERE job_id = $1 AND processing_status = 'pending')"
        " OR EXISTS (SELECT 1 FROM composites WHERE job_id = $1"
        "   AND status IN ('pending', 'running'))",
        job_id,
    )
    return still_open


async def _ensure_composites(connection: asyncpg.Connection, job_id: JobId, job: _Job) -> None:
    """Write the job's composite rows, band names resolved to file ids, the first time."""
    count = await connection.fetchval("SELECT count(*) FROM composites WHERE job_id = $1", job_id)
    if count >= len(job.composites):
        return
    files = await connection.fetch(
        "SELECT id, url, requested_name FROM files WHERE job_id = $1 ORDER BY position", job_id
    )
    named = [(row["url"], row["requested_name"]) for row in files]
    for position, composite in enumerate(job.composites):
        bands: dict[str, str] = composite.get("bands") or {}
        band_files = {
            role: str(files[index]["id"])
            for role, name in bands.items()
            if (index := match_band(name, named)) is not None
        }
        await connection.execute(
            "INSERT INTO composites (id, job_id, position, kind, bands, band_files, bounds)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            # Derived from job and position: writing the rows twice writes the same rows.
            composite_key(job_id, position),
            job_id,
            position,
            composite.get("kind"),
            bands,
            band_files,
            composite.get("bounds"),
        )


async def _advance_composites(connection: asyncpg.Connection, job_id: JobId, job: _Job) -> None:
    """Queue each pending composite whose bands are all downloaded; fail those that cannot be."""
    await _ensure_composites(connection, job_id, job)
    rows = await connection.fetch(
        "SELECT id, job_id, kind, bands, band_files, bounds FROM composites"
        " WHERE job_id = $1 AND status = 'pending' ORDER BY position FOR UPDATE",
        job_id,
    )
    for row in rows:
        roles = COMPOSITE_ROLES.get(row["kind"], ())
        band_files: dict[str, str] = row["band_files"]
        if unnamed := [role for role in roles if role not in band_files]:
            named = row["bands"].get(unnamed[0])
            await _fail_composite(
                connection, row["id"], f"band {unnamed[0]}: no file of the job is named {named!r}"
            )
            continue
        files = {
            str(f["id"]): f
            for f in await connection.fetch(
                "SELECT id, status, filepath, error FROM files WHERE id = ANY($1::uuid[])",
                [band_files[role] for role in roles],
            )
        }
        bands = {role: files[band_files[role]] for role in roles}
        if lost := _lost_band(row["bands"], bands):
            await _fail_composite(connection, row["id"], lost)
        elif all(band["status"] == "completed" for band in bands.values()):
            await _queue_composite(connection, row, job, files)


def _lost_band(names: dict[str, str], bands: dict[str, asyncpg.Record]) -> str | None:
    """Why the composite can never be built: a band whose file ended without bytes."""
    for role, file in bands.items():
        if file["status"] in ("failed", "cancelled"):
            reason = file["error"] or file["status"]
            return f"band {role} ({names[role]}) was not downloaded: {reason}"
    return None


async def _queue_composite(
    connection: asyncpg.Connection,
    row: asyncpg.Record,
    job: _Job,
    files: dict[str, asyncpg.Record],
) -> None:
    queued = queued_composite(
        row, job.user_id, job.priority, {i: f["filepath"] for i, f in files.items()}
    )
    await add_to_outbox(
        connection, queued.stream, queued.body, headers=trace_headers(), command_key=queued.key
    )
    await connection.execute(
        "UPDATE composites SET status = 'running', queued_at = now(), updated_at = now()"
        " WHERE id = $1 AND status = 'pending'",
        row["id"],
    )
    log.info(
        "composite %s queued", row["id"], extra={"job_id": str(row["job_id"]), "kind": row["kind"]}
    )


async def _fail_composite(connection: asyncpg.Connection, composite: Any, error: str) -> None:
    await connection.execute(
        "UPDATE composites SET status = 'failed', error = $2, finished_at = now(),"
        " updated_at = now() WHERE id = $1 AND status IN ('pending', 'running')",
        composite,
        error,
    )


async def _abandon(connection: asyncpg.Connection, job_id: JobId, job: _Job) -> None:
    if job.composites:
        await _ensure_composites(connection, job_id, job)
    await connection.execute(
        "UPDATE files SET processing_status = 'failed', processing_error = $2, updated_at = now()"
        " WHERE job_id = $1 AND processing_status = 'pending'",
        job_id,
        job.error,
    )
    await connection.execute(
        "UPDATE composites SET status = 'failed', error = $2, finished_at = now(),"
        " updated_at = now() WHERE job_id = $1 AND status IN ('pending', 'running')",
        job_id,
        job.error,
    )
