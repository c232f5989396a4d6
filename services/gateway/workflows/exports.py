"""An export step ends with its export: ready (its archive is the step's result) or failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.workflows.engine import StepEnd, steps_ended
from services.gateway.workflows.records import StepStatus

if TYPE_CHECKING:
    import asyncpg


async def export_step_ended(connection: asyncpg.Connection, export_id: str) -> None:
    """When export `export_id` (just ended, its row locked) is a workflow's step, end it."""
    row = await connection.fetchrow(
        "SELECT workflow_id::text AS workflow_id, step, status, format, size, sha256, error"
        " FROM exports WHERE id = $1 AND workflow_id IS NOT NULL",
        export_id,
    )
    if row is None:
        return
    result = None
    if row["status"] == "ready":
        status, error = StepStatus.COMPLETED, None
        result = {
            "export_id": export_id,
            "format": row["format"],
            "size": row["size"],
            "sha256": row["sha256"],
            "download_url": f"/api/v1/downloads/exports/{export_id}/download",
        }
    elif row["status"] == "cancelled":
        status, error = StepStatus.CANCELLED, "its export was cancelled"
    else:
        status, error = StepStatus.FAILED, f"its export failed: {row['error']}"
    await steps_ended(connection, [StepEnd(row["workflow_id"], row["step"], status, result, error)])
