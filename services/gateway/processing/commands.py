"""Processing commands rebuilt from the record: the reconciler's FILE_PROCESSING and
COMPOSITES kinds, and the BuildComposite a composite row stands for.

Processing has no `stale` query: nothing is reported while a step runs (a COG may take an
hour), so silence means nothing. A command Redis lost is found by its missing live marker,
and a dead worker's command is reclaimed from the pending-entries list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from services.gateway.outbox import CommandKind, QueuedCommand, no_row_waiting
from shared.composites import COMPOSITE_ROLES
from shared.events import ENCODER, BuildComposite, ProcessFile, ProcessStep
from shared.ids import CompositeId, FileId, JobId, UserId
from shared.streams import lane_for, process_stream

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import asyncpg

_PROCESS_COLUMNS = (
    "f.id, f.job_id, f.filepath, f.filename, f.processing_steps, j.user_id, j.priority"
)


async def _processing_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[QueuedCommand]:
    """Files of unfinished jobs whose processing is pending and whose command left the outbox."""
    rows = await connection.fetch(
        f"SELECT {_PROCESS_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.processing_status = 'pending' AND j.finished_at IS NULL"
        " AND ($1::uuid IS NULL OR f.id > $1)"
        f" AND {no_row_waiting('$3::text || f.id::text')}"
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


def _queued_processing(row: asyncpg.Record) -> QueuedCommand:
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
    return QueuedCommand(
        subject_id=command.file_id,
        key=FILE_PROCESSING.key(command.file_id),
        stream=process_stream(lane_for(command.priority)),
        body=ENCODER.encode(command),
    )


async def _composites_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[QueuedCommand]:
    """Queued composites of unfinished jobs whose command left the outbox."""
    rows = await connection.fetch(
        "SELECT c.id, c.job_id, c.kind, c.band_files, c.bounds, j.user_id, j.priority"
        " FROM composites c JOIN jobs j ON j.id = c.job_id"
        " WHERE c.status = 'running' AND j.finished_at IS NULL"
        " AND ($1::uuid IS NULL OR c.id > $1)"
        f" AND {no_row_waiting('$3::text || c.id::text')}"
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
        queued_composite(row, UserId(str(row["user_id"])), row["priority"], filepaths)
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


def queued_composite(
    row: asyncpg.Record, user_id: UserId, priority: int, filepaths: Mapping[str, str]
) -> QueuedCommand:
    """The BuildComposite of a composite row whose bands are all downloaded (file id -> key)."""
    band_files: dict[str, str] = row["band_files"]
    command = BuildComposite(
        job_id=JobId(str(row["job_id"])),
        composite_id=CompositeId(str(row["id"])),
        user_id=user_id,
        kind=row["kind"],
        bands={role: filepaths[band_files[role]] for role in COMPOSITE_ROLES.get(row["kind"], ())},
        bounds=tuple(row["bounds"]) if row["bounds"] is not None else None,
        priority=priority,
    )
    return QueuedCommand(
        subject_id=command.composite_id,
        key=COMPOSITES.key(command.composite_id),
        stream=process_stream(lane_for(priority)),
        body=ENCODER.encode(command),
    )


FILE_PROCESSING = CommandKind(
    name="process",
    key_prefix="process:",
    sent=_processing_sent,
    still_open=_processing_open,
)
COMPOSITES = CommandKind(
    name="composite",
    key_prefix="composite:",
    sent=_composites_sent,
    still_open=_composites_open,
)
