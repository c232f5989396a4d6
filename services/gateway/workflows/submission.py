"""Submitting a workflow: its row and every step in one transaction, its first steps launched
in the same one (their tasks' and jobs' commands in the outbox), so nothing is lost between."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from services.gateway.workflows.engine import launch_ready
from services.gateway.workflows.steps import insert_steps
from shared.ids import new_task_id

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

    from shared.ids import UserId
    from shared.workflows import ResolvedStep


class SubmittedWorkflow(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    existing: bool


async def submit_workflow(
    connection: asyncpg.Connection,
    *,
    user_id: UserId,
    name: str | None,
    args: dict[str, Any],
    steps: Sequence[ResolvedStep],
    allow_partial: bool,
    idempotency_key: str | None,
    trace_id: str | None,
    trace_headers: dict[str, str],
) -> SubmittedWorkflow:
    """Write the workflow (the caller's transaction); a repeated Idempotency-Key of the same
    user returns the workflow written the first time and writes nothing."""
    workflow_id = new_task_id()
    row = await connection.fetchrow(
        "INSERT INTO workflows (id, user_id, name, args, allow_partial, open_steps, trace_id,"
        " trace_headers, idempotency_key) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8::jsonb,"
        " $9) ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id",
        workflow_id,
        user_id,
        name,
        args,
        allow_partial,
        len(steps),
        trace_id,
        trace_headers,
        idempotency_key,
    )
    if row is None:
        existing = await connection.fetchval(
            "SELECT id FROM workflows WHERE user_id = $1 AND idempotency_key = $2",
            user_id,
            idempotency_key,
        )
        return SubmittedWorkflow(workflow_id=str(existing), existing=True)
    ready = await insert_steps(connection, workflow_id, steps, owner=None)
    await launch_ready(connection, workflow_id, ready)
    return SubmittedWorkflow(workflow_id=workflow_id, existing=False)
