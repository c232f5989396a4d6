"""The projection of the exporter's events onto `exports`.

Only pending and building exports move, so a replayed, late or out-of-order event (or one
after a cancel) changes nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from services.gateway.projection import Projector, one_by_one
from services.gateway.workflows.exports import export_step_ended
from shared.events import ExportFailed, ExportProgress, ExportReady

if TYPE_CHECKING:
    import asyncpg

    from shared.events import ExportEvent

log = logging.getLogger(__name__)


async def lock_export_of(connection: asyncpg.Connection, event: ExportEvent) -> bool:
    """The projection's lock for an export event: the export row; False when there is none."""
    found = await connection.fetchval(
        "SELECT true FROM exports WHERE id = $1 FOR UPDATE", event.export_id
    )
    return bool(found)


async def export_progress(connection: asyncpg.Connection, event: ExportProgress) -> bool:
    await connection.execute(
        "UPDATE exports SET status = 'building', files_done = greatest(files_done, $2),"
        " bytes_done = greatest(bytes_done, $3), updated_at = now()"
        " WHERE id = $1 AND status IN ('pending', 'building')",
        event.export_id,
        event.files_done,
        event.bytes_done,
    )
    return False


async def export_ready(connection: asyncpg.Connection, event: ExportReady) -> bool:
    await connection.execute(
        "UPDATE exports SET status = 'ready', filepath = $2, size = $3, sha256 = $4,"
        " files_done = file_count, bytes_done = total_bytes, error = NULL,"
        " finished_at = to_timestamp($5), updated_at = now()"
        " WHERE id = $1 AND status IN ('pending', 'building')",
        event.export_id,
        event.filepath,
        event.size,
        event.sha256,
        event.at,
    )
    log.info("export %s ready", event.export_id, extra={"export_id": event.export_id})
    await export_step_ended(connection, event.export_id)  # when it is a workflow's step
    return False


async def export_failed(connection: asyncpg.Connection, event: ExportFailed) -> bool:
    await connection.execute(
        "UPDATE exports SET status = 'failed', error = $2, finished_at = to_timestamp($3),"
        " updated_at = now() WHERE id = $1 AND status IN ('pending', 'building')",
        event.export_id,
        event.error,
        event.at,
    )
    log.info("export %s failed", event.export_id, extra={"export_id": event.export_id})
    await export_step_ended(connection, event.export_id)
    return False


# An export event settles no job (the job of an automatic export ended before it was queued),
# and an export reports a few events in its life: one by one.
PROJECTORS: dict[type, Projector] = {
    ExportProgress: Projector(
        apply=one_by_one(export_progress), lock=lock_export_of, claimed=False
    ),
    # An export step's end may start the steps after it: outbox rows.
    ExportReady: Projector(apply=one_by_one(export_ready), lock=lock_export_of, writes_outbox=True),
    ExportFailed: Projector(
        apply=one_by_one(export_failed), lock=lock_export_of, writes_outbox=True
    ),
}
