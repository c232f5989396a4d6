"""Cancelling a workflow: every open step's task or job, and every step not started yet.

The rows are locked in the tracker's order (jobs, tasks, exports, then the workflow), so a cancel
racing the projection of a step's end cannot deadlock with it. The workers are told after the
commit (`stop_workflow` does both, for the JSON API and the dashboard): PostgreSQL holds the
cancel, Redis only hurries it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from services.gateway.exports.cancellation import announce_export_cancel
from services.gateway.jobs.cancellation import announce_cancel
from services.gateway.jobs.lifecycle import mark_job_cancelled
from services.gateway.tasks.cancellation import announce_task_cancels
from services.gateway.tasks.queries import cancel_open_tasks
from services.gateway.workflows.errors import WorkflowAlreadyEnded, WorkflowNotFound
from services.gateway.workflows.records import FINAL_WORKFLOW_STATUSES, WorkflowStatus
from shared.ids import JobId

if TYPE_CHECKING:
    import asyncpg
    from redis.asyncio import Redis

    from services.gateway.outbox import OutboxRelay
    from shared.ids import UserId


class Cancelled(msgspec.Struct, frozen=True, kw_only=True):
    """What the workers must hear of."""

    task_ids: list[str]
    job_ids: list[JobId]
    export_ids: list[str]


async def cancel_workflow(
    connection: asyncpg.Connection,
    user_id: UserId,
    workflow_id: str,
    *,
    trace_headers: dict[str, str],
) -> Cancelled:
    """Cancel an open workflow (the caller's transaction); WorkflowNotFound for another
    user's or no workflow, WorkflowAlreadyEnded once it ended."""
    status = await connection.fetchval(
        "SELECT status FROM workflows WHERE id = $1 AND user_id = $2", workflow_id, user_id
    )
    if status is None:
        raise WorkflowNotFound(workflow_id)
    jobs = await connection.fetch(
        "SELECT id::text AS id FROM jobs WHERE workflow_id = $1 AND finished_at IS NULL"
        " ORDER BY id FOR UPDATE",
        workflow_id,
    )
    tasks = await connection.fetch(
        "SELECT id::text AS id FROM tasks WHERE workflow_id = $1"
        " AND status IN ('pending', 'running') ORDER BY id FOR UPDATE",
        workflow_id,
    )
    exports = await connection.fetch(
        "UPDATE exports SET status = 'cancelled', error = 'its workflow was cancelled',"
        " finished_at = now(), updated_at = now()"
        " WHERE workflow_id = $1 AND status IN ('pending', 'building') RETURNING id::text AS id",
        workflow_id,
    )
    status = await connection.fetchval(
        "SELECT status FROM workflows WHERE id = $1 FOR UPDATE", workflow_id
    )
    if status in FINAL_WORKFLOW_STATUSES:
        raise WorkflowAlreadyEnded(workflow_id, status)
    await connection.execute(
        "UPDATE workflows SET status = $2, error = 'cancelled by the user', finished_at = now(),"
        " updated_at = now() WHERE id = $1",
        workflow_id,
        WorkflowStatus.CANCELLED,
    )
    await connection.execute(
        "UPDATE workflow_steps SET status = 'cancelled', error = 'the workflow was cancelled',"
        " finished_at = now() WHERE workflow_id = $1"
        " AND status IN ('waiting', 'launched', 'expanded')",
        workflow_id,
    )
    for job in jobs:
        await mark_job_cancelled(
            connection, JobId(job["id"]), "its workflow was cancelled", headers=trace_headers
        )
    ended = await cancel_open_tasks(connection, [task["id"] for task in tasks])
    return Cancelled(
        task_ids=[row["id"] for row in ended],
        job_ids=[JobId(job["id"]) for job in jobs],
        export_ids=[row["id"] for row in exports],
    )


async def stop_workflow(
    pool: asyncpg.Pool,
    owner: UserId,
    workflow_id: str,
    *,
    redis: Redis,
    relay: OutboxRelay,
    ttl_s: int,
    trace_headers: dict[str, str],
) -> Cancelled:
    """Cancel the workflow on the record (cancel_workflow's errors), then tell the workers of
    its steps' tasks, jobs and exports."""
    async with pool.acquire() as connection, connection.transaction():
        cancelled = await cancel_workflow(
            connection, owner, workflow_id, trace_headers=trace_headers
        )
    relay.wake()
    await announce_task_cancels(redis, cancelled.task_ids, ttl_s=ttl_s)
    for job_id in cancelled.job_ids:
        await announce_cancel(redis, job_id, ttl_s=ttl_s)
    for export_id in cancelled.export_ids:
        await announce_export_cancel(redis, export_id, ttl_s=ttl_s)
    return cancelled
