"""The reconciler's EXPORTS kind: builds Redis lost, published again from the export row.

Like downloads: a pending export's command is lost when its live marker is; a building one is
stale when no progress came for `stale_s` (the exporter reports every progress_interval_s).
The row keeps its command, so it is published again exactly as written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.outbox import CommandKind, QueuedCommand, no_row_waiting, not_queued_within
from shared.streams import EXPORT_STREAM

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg


async def _exports_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[QueuedCommand]:
    """Pending exports whose command left the outbox, in id order after `after`."""
    rows = await connection.fetch(
        "SELECT e.id, e.command FROM exports e"
        " WHERE e.status = 'pending' AND e.command IS NOT NULL"
        " AND ($1::uuid IS NULL OR e.id > $1)"
        f" AND {no_row_waiting('$3::text || e.id::text')}"
        " ORDER BY e.id LIMIT $2",
        after,
        limit,
        EXPORTS.key_prefix,
    )
    return [_queued_export(row) for row in rows]


async def _exports_stale(
    connection: asyncpg.Connection, stale_s: float, limit: int
) -> list[QueuedCommand]:
    """Building exports with no progress for `stale_s` and not re-published within it."""
    rows = await connection.fetch(
        "SELECT e.id, e.command FROM exports e"
        " WHERE e.status = 'building' AND e.command IS NOT NULL"
        " AND e.updated_at < now() - make_interval(secs => $1)"
        f" AND {not_queued_within('$3::text || e.id::text', '$1')}"
        " ORDER BY e.updated_at LIMIT $2",
        stale_s,
        limit,
        EXPORTS.key_prefix,
    )
    return [_queued_export(row) for row in rows]


async def _exports_open(connection: asyncpg.Connection, export_ids: Sequence[str]) -> set[str]:
    rows = await connection.fetch(
        "SELECT id FROM exports WHERE id = ANY($1::uuid[])"
        " AND status IN ('pending', 'building') FOR UPDATE SKIP LOCKED",
        export_ids,
    )
    return {str(row["id"]) for row in rows}


def _queued_export(row: asyncpg.Record) -> QueuedCommand:
    export_id = str(row["id"])
    return QueuedCommand(
        subject_id=export_id,
        key=EXPORTS.key(export_id),
        stream=EXPORT_STREAM,
        body=row["command"],
    )


EXPORTS = CommandKind(
    name="export",
    key_prefix="export:",
    sent=_exports_sent,
    still_open=_exports_open,
    stale=_exports_stale,
)
