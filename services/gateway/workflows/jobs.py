"""A download step ends with its job: the job's files become the step's result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.gateway.workflows.engine import StepEnd, steps_ended
from services.gateway.workflows.records import StepStatus
from shared.statuses import JobStatus

if TYPE_CHECKING:
    import asyncpg

    from shared.ids import JobId


async def job_step_ended(connection: asyncpg.Connection, job_id: JobId, status: JobStatus) -> None:
    """When job `job_id` (just ended with `status`, its row locked) is a workflow's download
    step, end the step: completed, or for a partial job completed only if the workflow allows
    partial results, with the stored files either way."""
    row = await connection.fetchrow(
        "SELECT j.workflow_id::text AS workflow_id, j.step, w.allow_partial FROM jobs j"
        " JOIN workflows w ON w.id = j.workflow_id WHERE j.id = $1",
        job_id,
    )
    if row is None:
        return
    files = await connection.fetch(
        "SELECT id::text AS file_id, url, filename, filepath AS key, sha256, size, status, error"
        " FROM files WHERE job_id = $1 ORDER BY position",
        job_id,
    )
    stored = [f for f in files if f["status"] == "completed"]
    result: dict[str, Any] = {
        "job_id": str(job_id),
        "status": str(status),
        "files": [dict(f) for f in stored],
    }
    failed = [
        f"{f['url']}: {f['error'] or f['status']}" for f in files if f["status"] != "completed"
    ]
    if failed:
        result["failed_files"] = failed
    step_status, error = StepStatus.COMPLETED, None
    if status is JobStatus.CANCELLED:
        step_status, error = StepStatus.CANCELLED, "its download job was cancelled"
    elif status is JobStatus.FAILED or (status is JobStatus.PARTIAL and not row["allow_partial"]):
        step_status = StepStatus.FAILED
        error = f"its download job ended {status}: {len(failed)} of {len(files)} files failed"
    await steps_ended(
        connection, [StepEnd(row["workflow_id"], row["step"], step_status, result, error)]
    )
