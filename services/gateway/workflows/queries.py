"""Reading workflows: one with every step (its task's or job's live state), and a page of them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.workflows.errors import WorkflowNotFound
from services.gateway.workflows.records import (
    StepRecord,
    WorkflowRecord,
    WorkflowStatus,
    WorkflowSummary,
)

if TYPE_CHECKING:
    import asyncpg

    from shared.ids import UserId

# A launched step shows its task's status (pending, running) or its job's (pending,
# in_progress): what it is doing now, not just that it was queued.
_STEPS = """
SELECT s.key, s.kind, s.task, s.after, s.owner, s.task_id::text AS task_id,
  s.job_id::text AS job_id, s.result, s.error, s.launched_at, s.finished_at,
  CASE WHEN s.status = 'launched' THEN coalesce(t.status, j.status, s.status)
       ELSE s.status END AS status,
  t.attempts, t.progress, coalesce(t.started_at, j.created_at) AS started_at,
  coalesce(s.error, t.error, j.error) AS shown_error
FROM workflow_steps s
LEFT JOIN tasks t ON t.id = s.task_id
LEFT JOIN jobs j ON j.id = s.job_id
WHERE s.workflow_id = $1 ORDER BY s.position
"""


async def get_workflow(pool: asyncpg.Pool, user_id: UserId, workflow_id: str) -> WorkflowRecord:
    async with pool.acquire() as connection:
        row = await connection.fetchrow(
            "SELECT id::text AS id, name, status, allow_partial, args, result, error, trace_id,"
            " created_at, finished_at FROM workflows WHERE id = $1 AND user_id = $2",
            workflow_id,
            user_id,
        )
        if row is None:
            raise WorkflowNotFound(workflow_id)
        steps = await connection.fetch(_STEPS, workflow_id)
    return WorkflowRecord(
        workflow_id=row["id"],
        name=row["name"],
        status=WorkflowStatus(row["status"]),
        allow_partial=row["allow_partial"],
        args=row["args"],
        result=row["result"],
        error=row["error"],
        trace_id=row["trace_id"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        steps=[
            StepRecord(
                key=s["key"],
                kind=s["kind"],
                task=s["task"],
                status=s["status"],
                after=list(s["after"]),
                owner=s["owner"],
                task_id=s["task_id"],
                job_id=s["job_id"],
                attempts=s["attempts"],
                progress=s["progress"],
                result=s["result"],
                error=s["shown_error"],
                launched_at=s["launched_at"],
                started_at=s["started_at"],
                finished_at=s["finished_at"],
            )
            for s in steps
        ],
    )


async def list_workflows(
    pool: asyncpg.Pool,
    user_id: UserId,
    *,
    status: WorkflowStatus | None,
    page: int,
    per_page: int,
) -> tuple[list[WorkflowSummary], int]:
    """A page of the user's workflows, newest first, and how many there are in all."""
    async with pool.acquire() as connection:
        rows = await connection.fetch(
            "SELECT id::text AS id, name, status, created_at, finished_at FROM workflows"
            " WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)"
            " ORDER BY created_at DESC, id LIMIT $3 OFFSET $4",
            user_id,
            status,
            per_page,
            (page - 1) * per_page,
        )
        total = await connection.fetchval(
            "SELECT count(*) FROM workflows WHERE user_id = $1"
            " AND ($2::text IS NULL OR status = $2)",
            user_id,
            status,
        )
    summaries = [
        WorkflowSummary(
            workflow_id=r["id"],
            name=r["name"],
            status=WorkflowStatus(r["status"]),
            created_at=r["created_at"],
            finished_at=r["finished_at"],
        )
        for r in rows
    ]
    return summaries, total
