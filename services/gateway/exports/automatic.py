"""A job's automatic export (submit's `export` option), queued as the job ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.exports.insertion import insert_export
from services.gateway.exports.selection import resolve_selection
from shared.ids import UserId
from shared.statuses import JobStatus

if TYPE_CHECKING:
    import asyncpg

    from shared.ids import JobId


async def export_finished_job(
    connection: asyncpg.Connection, job_id: JobId, status: JobStatus
) -> str | None:
    """Queue the automatic export of a job that just ended, when it asked for one; its id.

    Runs in the tracker's transaction that finishes the job, so the job's end and its export
    are written together or not at all. The exporter enforces the size limit for these.
    """
    if status not in (JobStatus.COMPLETED, JobStatus.PARTIAL):
        return None
    row = await connection.fetchrow("SELECT user_id, options FROM jobs WHERE id = $1", job_id)
    wanted = (row["options"] or {}).get("export") if row is not None else None
    if row is None or not isinstance(wanted, dict):
        return None
    user_id = UserId(str(row["user_id"]))
    selection = await resolve_selection(connection, user_id, job_ids=[job_id])
    if not selection.items:
        return None
    return await insert_export(
        connection,
        user_id=user_id,
        job_id=job_id,
        export_format="tar.gz" if wanted.get("format") == "tar.gz" else "zip",
        include_metadata=bool(wanted.get("include_metadata", True)),
        selection=selection,
    )
