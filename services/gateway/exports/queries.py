"""Exports as the API reads and writes them, and the export row with its BuildExport command.

Every query of ExportRepository is scoped to one user and returns the records of
exports/records.py.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from services.gateway.errors import (
    ExportAlreadyEnded,
    ExportNotFound,
    ExportNotReady,
    ExportTooLarge,
    NotExportable,
)
from services.gateway.exports.insertion import insert_export
from services.gateway.exports.records import CreatedExport, ExportRecord, StoredArchive
from services.gateway.exports.selection import paths_to_keys, refuse_tampered, resolve_selection
from services.gateway.workflows.exports import export_step_ended
from shared.ids import JobId
from shared.statuses import ExportStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

    from services.gateway.exports.records import Selection
    from shared.events import ExportFormat
    from shared.ids import UserId
    from shared.storage import Storage

log = logging.getLogger(__name__)

# One command carries every item: past this many the message (and the manifest) gets unwieldy.
MAX_EXPORT_ITEMS = 100_000
OPEN_EXPORT_STATUSES = (ExportStatus.PENDING, ExportStatus.BUILDING)
# The columns an ExportRecord takes as they are.
_EXPORT_COLUMNS = (
    "format",
    "include_metadata",
    "file_count",
    "total_bytes",
    "files_done",
    "bytes_done",
    "size",
    "sha256",
    "error",
    "created_at",
    "updated_at",
    "finished_at",
)


class ExportRepository:
    """Exports as the API reads and writes them; every query is scoped to one user."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        user_id: UserId,
        *,
        job_ids: Sequence[uuid.UUID],
        file_ids: Sequence[uuid.UUID],
        file_paths: Sequence[str],
        export_format: ExportFormat,
        include_metadata: bool,
        storage: Storage,
        max_bytes: int,
    ) -> CreatedExport:
        """Check and resolve the selection, then write the export and its command."""
        keys = await paths_to_keys(user_id, file_paths, storage)
        async with self._pool.acquire() as connection, connection.transaction():
            selection = await resolve_selection(
                connection, user_id, job_ids=job_ids, file_ids=file_ids, file_paths=keys
            )
            await refuse_tampered(selection, storage)
            _refuse_unexportable(selection, max_bytes=max_bytes)
            export_id = await insert_export(
                connection,
                user_id=user_id,
                job_id=None,
                export_format=export_format,
                include_metadata=include_metadata,
                selection=selection,
            )
        return CreatedExport(
            export_id=export_id,
            file_count=len(selection.items),
            total_bytes=selection.total_bytes,
        )

    async def status(self, user_id: UserId, export_id: str) -> ExportRecord:
        row = await self._pool.fetchrow(
            "SELECT * FROM exports WHERE id = $1 AND user_id = $2", export_id, user_id
        )
        if row is None:
            raise ExportNotFound(export_id)
        return ExportRecord(
            export_id=str(row["id"]),
            status=ExportStatus(row["status"]),
            job_id=JobId(str(row["job_id"])) if row["job_id"] else None,
            **{name: row[name] for name in _EXPORT_COLUMNS},
        )

    async def archive(self, user_id: UserId, export_id: str) -> StoredArchive:
        """The ready archive of the export; ExportNotReady while it is not."""
        row = await self._pool.fetchrow(
            "SELECT id, status, filepath, sha256, format FROM exports"
            " WHERE id = $1 AND user_id = $2",
            export_id,
            user_id,
        )
        if row is None:
            raise ExportNotFound(export_id)
        if row["status"] != ExportStatus.READY or row["filepath"] is None:
            raise ExportNotReady(export_id, row["status"])
        return StoredArchive(
            export_id=str(row["id"]),
            filepath=row["filepath"],
            sha256=row["sha256"],
            format=row["format"],
        )

    async def cancel(self, user_id: UserId, export_id: str, *, reason: str | None) -> None:
        """Mark an unfinished export cancelled; ExportAlreadyEnded once it ended."""
        async with self._pool.acquire() as connection, connection.transaction():
            status = await connection.fetchval(
                "SELECT status FROM exports WHERE id = $1 AND user_id = $2 FOR UPDATE",
                export_id,
                user_id,
            )
            if status is None:
                raise ExportNotFound(export_id)
            if status not in OPEN_EXPORT_STATUSES:
                raise ExportAlreadyEnded(export_id, status)
            await connection.execute(
                "UPDATE exports SET status = 'cancelled', error = $2, finished_at = now(),"
                " updated_at = now() WHERE id = $1",
                export_id,
                reason or "cancelled by the user",
            )
            await export_step_ended(connection, export_id)


def _refuse_unexportable(selection: Selection, *, max_bytes: int) -> None:
    """NotExportable for an empty selection, ExportTooLarge past the item or size limit."""
    if not selection.items:
        raise NotExportable(
            "job_ids, file_ids, file_paths: no stored file in the selection to export"
        )
    if len(selection.items) > MAX_EXPORT_ITEMS:
        raise ExportTooLarge(
            f"the selection holds {len(selection.items)} files and artifacts; "
            f"an export takes at most {MAX_EXPORT_ITEMS}"
        )
    if selection.total_bytes > max_bytes:
        raise ExportTooLarge(
            f"the selection holds {selection.total_bytes} bytes in "
            f"{len(selection.items)} files, over the export size limit of {max_bytes} "
            "bytes (DOWNLINK_MAX_EXPORT_SIZE); export fewer files at a time"
        )
