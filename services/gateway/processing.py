"""Processing in the saga: what the tracker queues after a download and what a job's end waits for.

- After a FileDownloaded of a job that asked for `process` steps: the file's processing is
  pending and its ProcessFile command goes to the outbox, in the tracker's transaction.
- Composites fan in: each is queued (BuildComposite, once) when every band it names is
  downloaded, and fails when one of them ended without bytes.
- The processor's ArtifactCreated, FileProcessed and CompositeFinished are projected here,
  idempotently. A file (or composite) completes once its final event *and* the artifacts it
  announces are recorded: the tracker may see them in any order.
- `open_work` tells settle_job whether processing still holds the job open.
- FILE_PROCESSING and COMPOSITES are the reconciler's command kinds: after a Redis loss it
  rebuilds their commands from these tables and publishes them again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from services.gateway import repository
from services.gateway.relay import trace_headers
from services.gateway.schemas import COMPOSITE_ROLES, match_band
from shared.events import (
    ENCODER,
    ArtifactCreated,
    BuildComposite,
    CompositeFinished,
    FileProcessed,
    ProcessFile,
    ProcessStep,
)
from shared.ids import FileId, JobId, UserId
from shared.streams import lane_for, process_stream

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import asyncpg

    from services.gateway.statuses import JobStatus
    from shared.events import FileDownloaded

log = logging.getLogger(__name__)

SettleJob = Callable[["asyncpg.Connection", JobId, "JobStatus"], Awaitable[None]]
ProcessingEvent = ArtifactCreated | FileProcessed | CompositeFinished

# The artifacts each successful step or composite leaves; its end waits for all of them.
ARTIFACTS_OF_COMPOSITE: dict[str, tuple[str, ...]] = {
    "ndvi": ("ndvi",),
    "rgb": ("rgb", "rgb_preview"),
}


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


# --- queueing the work (the caller holds the job's lock) ---------------------------------------


async def after_download(connection: asyncpg.Connection, event: FileDownloaded) -> None:
    """Queue the file's processing and any composite whose bands are now all in."""
    job = await _job(connection, event.job_id)
    if job is None:
        return
    if job.steps:
        result = await connection.execute(
            "UPDATE files SET processing_status = 'pending', processing_steps = $3,"
            " updated_at = now()"
            " WHERE id = $1 AND job_id = $2 AND processing_status IS NULL",
            event.file_id,
            event.job_id,
            list(job.steps),
        )
        if _changed(result):
            command = ProcessFile(
                job_id=event.job_id,
                file_id=event.file_id,
                user_id=job.user_id,
                filepath=event.filepath,
                filename=event.filename,
                steps=job.steps,
                priority=job.priority,
            )
            await repository.add_to_outbox(
                connection,
                process_stream(lane_for(job.priority)),
                ENCODER.encode(command),
                headers=trace_headers(),
                command_key=FILE_PROCESSING.key(event.file_id),
            )
    if job.composites:
        await _advance_composites(connection, event.job_id, job)


async def open_work(connection: asyncpg.Connection, job_id: JobId) -> bool:
    """Whether processing still holds the job open (the caller holds the job's lock).

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
            repository.composite_key(job_id, position),
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
        band_files: dict[str, str] = row["band_files"]
        bands: dict[str, str] = row["bands"]
        roles = COMPOSITE_ROLES.get(row["kind"], ())
        unnamed = [role for role in roles if role not in band_files]
        if unnamed:
            role = unnamed[0]
            await _fail_composite(
                connection,
                row["id"],
                f"band {role}: no file of the job is named {bands.get(role)!r}",
            )
            continue
        files = {
            str(f["id"]): f
            for f in await connection.fetch(
                "SELECT id, status, filepath, error FROM files WHERE id = ANY($1::uuid[])",
                [band_files[role] for role in roles],
            )
        }
        lost = [
            role for role in roles if files[band_files[role]]["status"] in ("failed", "cancelled")
        ]
        if lost:
            file = files[band_files[lost[0]]]
            reason = file["error"] or file["status"]
            await _fail_composite(
                connection,
                row["id"],
                f"band {lost[0]} ({bands[lost[0]]}) was not downloaded: {reason}",
            )
            continue
        if any(files[band_files[role]]["status"] != "completed" for role in roles):
            continue
        queued = _queued_composite(
            row, job.user_id, job.priority, {i: f["filepath"] for i, f in files.items()}
        )
        await repository.add_to_outbox(
            connection,
            queued.stream,
            queued.body,
            headers=trace_headers(),
            command_key=queued.key,
        )
        await connection.execute(
            "UPDATE composites SET status = 'running', queued_at = now(), updated_at = now()"
            " WHERE id = $1 AND status = 'pending'",
            row["id"],
        )
        log.info("composite %s queued", row["id"], extra={"job_id": job_id, "kind": row["kind"]})


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


# --- projecting the processor's events ---------------------------------------------------------


async def project(
    connection: asyncpg.Connection, event: ProcessingEvent, *, settle: SettleJob
) -> None:
    """Apply one processing event in its own transaction; `settle` may then end the job."""
    async with connection.transaction():
        if not await repository.claim_event(connection, event.event_id):
            return
        job_status = await repository.lock_job(connection, event.job_id)
        if job_status is None:
            return
        if isinstance(event, ArtifactCreated):
            if not await _record_artifact(connection, event):
                return
            if event.file_id is not None:
                done = await _complete_file(connection, event.job_id, event.file_id)
            else:
                done = await _complete_composite(connection, event.job_id, event.composite_id)
        elif isinstance(event, FileProcessed):
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
            done = await _complete_file(connection, event.job_id, event.file_id)
        else:
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
            done = await _complete_composite(connection, event.job_id, event.composite_id)
        if done:
            await settle(connection, event.job_id, job_status)


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
    if not _changed(result):
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


def _changed(command_status: str) -> bool:
    # asyncpg answers INSERT/UPDATE with its command tag, e.g. "UPDATE 1" or "INSERT 0 1".
    return command_status.rsplit(" ", 1)[-1] != "0"


# --- the reconciler: processing commands Redis lost ---------------------------------------------
# Processing has no `stale` query: nothing is reported while a step runs (a COG may take an
# hour), so silence means nothing. A command Redis lost is found by its missing live marker,
# and a dead worker's command is reclaimed from the pending-entries list.

_PROCESS_COLUMNS = (
    "f.id, f.job_id, f.filepath, f.filename, f.processing_steps, j.user_id, j.priority"
)


async def _processing_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[repository.QueuedCommand]:
    """Files of unfinished jobs whose processing is pending and whose command left the outbox."""
    rows = await connection.fetch(
        f"SELECT {_PROCESS_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.processing_status = 'pending' AND j.finished_at IS NULL"
        " AND ($1::uuid IS NULL OR f.id > $1)"
        f" AND {repository.no_row_waiting('$3::text || f.id::text')}"
        " ORDER BY f.id LIMIT $2",
        after,
        limit,
        FILE_PROCESSING.key_prefix,
    )
    return [_queued_processing(row) for row in rows]


async def _processing_open(connection: asyncpg.Connection, file_ids: Sequence[str]) -> set[str]:
    rows = await connection.fetch(
        "SELECT f.id FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.id = ANY($1::uuid[]) AND f.processing_status = 'pending'"
        " AND j.finished_at IS NULL FOR UPDATE OF f SKIP LOCKED",
        file_ids,
    )
    return {str(row["id"]) for row in rows}


def _queued_processing(row: asyncpg.Record) -> repository.QueuedCommand:
    # The command after_download() queued: the file as downloaded, the steps copied then.
    command = ProcessFile(
        job_id=JobId(str(row["job_id"])),
        file_id=FileId(str(row["id"])),
        user_id=UserId(str(row["user_id"])),
        filepath=row["filepath"],
        filename=row["filename"],
        steps=msgspec.convert(tuple(row["processing_steps"] or ()), tuple[ProcessStep, ...]),
        priority=row["priority"],
    )
    return repository.QueuedCommand(
        subject_id=command.file_id,
        key=FILE_PROCESSING.key(command.file_id),
        stream=process_stream(lane_for(command.priority)),
        body=ENCODER.encode(command),
    )


async def _composites_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[repository.QueuedCommand]:
    """Queued composites of unfinished jobs whose command left the outbox."""
    rows = await connection.fetch(
        "SELECT c.id, c.job_id, c.kind, c.band_files, c.bounds, j.user_id, j.priority"
        " FROM composites c JOIN jobs j ON j.id = c.job_id"
        " WHERE c.status = 'running' AND j.finished_at IS NULL"
        " AND ($1::uuid IS NULL OR c.id > $1)"
        f" AND {repository.no_row_waiting('$3::text || c.id::text')}"
        " ORDER BY c.id LIMIT $2",
        after,
        limit,
        COMPOSITES.key_prefix,
    )
    bands = [file_id for row in rows for file_id in row["band_files"].values()]
    filepaths = {
        str(band["id"]): band["filepath"]
        for band in await connection.fetch(
            "SELECT id, filepath FROM files WHERE id = ANY($1::uuid[])", bands
        )
    }
    return [
        _queued_composite(row, UserId(str(row["user_id"])), row["priority"], filepaths)
        for row in rows
    ]


async def _composites_open(
    connection: asyncpg.Connection, composite_ids: Sequence[str]
) -> set[str]:
    rows = await connection.fetch(
        "SELECT c.id FROM composites c JOIN jobs j ON j.id = c.job_id"
        " WHERE c.id = ANY($1::uuid[]) AND c.status = 'running'"
        " AND j.finished_at IS NULL FOR UPDATE OF c SKIP LOCKED",
        composite_ids,
    )
    return {str(row["id"]) for row in rows}


def _queued_composite(
    row: asyncpg.Record, user_id: UserId, priority: int, filepaths: Mapping[str, str]
) -> repository.QueuedCommand:
    """The BuildComposite of a composite row whose bands are all downloaded (file id -> key)."""
    band_files: dict[str, str] = row["band_files"]
    command = BuildComposite(
        job_id=JobId(str(row["job_id"])),
        composite_id=str(row["id"]),
        user_id=user_id,
        kind=row["kind"],
        bands={role: filepaths[band_files[role]] for role in COMPOSITE_ROLES.get(row["kind"], ())},
        bounds=tuple(row["bounds"]) if row["bounds"] is not None else None,
        priority=priority,
    )
    return repository.QueuedCommand(
        subject_id=command.composite_id,
        key=COMPOSITES.key(command.composite_id),
        stream=process_stream(lane_for(priority)),
        body=ENCODER.encode(command),
    )


FILE_PROCESSING = repository.CommandKind(
    name="process",
    key_prefix="process:",
    sent=_processing_sent,
    still_open=_processing_open,
)
COMPOSITES = repository.CommandKind(
    name="composite",
    key_prefix="composite:",
    sent=_composites_sent,
    still_open=_composites_open,
)
