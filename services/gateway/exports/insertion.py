"""Writing an export: its row and its BuildExport command (outbox), in the caller's transaction.

Apart from the repository, so what queues exports (a finished job's automatic export, a
workflow's export step) needs no more than this.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from services.gateway.exports.commands import EXPORTS
from services.gateway.outbox import add_to_outbox
from shared.events import ENCODER, BuildExport
from shared.ids import ExportId
from shared.streams import EXPORT_STREAM
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    import asyncpg

    from services.gateway.exports.records import Selection
    from shared.events import ExportFormat
    from shared.ids import JobId, UserId

log = logging.getLogger(__name__)


async def insert_export(
    connection: asyncpg.Connection,
    *,
    user_id: UserId,
    job_id: JobId | None,
    export_format: ExportFormat,
    include_metadata: bool,
    selection: Selection,
) -> ExportId:
    """Write the export row and its BuildExport command (outbox) in the caller's transaction.

    The row keeps the command too: the reconciler publishes it again, as is, should Redis lose it.
    """
    export_id = ExportId(str(uuid.uuid4()))
    command = BuildExport(
        export_id=export_id,
        user_id=user_id,
        format=export_format,
        include_metadata=include_metadata,
        items=selection.items,
        jobs=selection.jobs,
    )
    body = ENCODER.encode(command)
    await connection.execute(
        "INSERT INTO exports (id, user_id, job_id, format, include_metadata, file_count,"
        " total_bytes, command) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        export_id,
        user_id,
        job_id,
        export_format,
        include_metadata,
        len(selection.items),
        selection.total_bytes,
        body,
    )
    await add_to_outbox(
        connection, EXPORT_STREAM, body, headers=trace_headers(), command_key=EXPORTS.key(export_id)
    )
    log.info(
        "export %s queued: %d items, %d bytes",
        export_id,
        len(selection.items),
        selection.total_bytes,
        extra={"export_id": export_id, "job_id": job_id},
    )
    return export_id
