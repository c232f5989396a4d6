"""Moving a workflow on when its steps end: in the transaction that ended the step's task or job.

The tracker calls `steps_ended` from the projection of a task's end (or the job's end, for a
download step), a cancel from its own transaction, each with the workflow's row locked, so the
decisions for one workflow are taken one at a time. Every change is forward-only (a step
ends once, from waiting, launched or expanded), and the event that ends it is claimed once by
the tracker: a replayed event, a second tracker or a SIGKILL between two batches cannot start a
fan-in twice or lose it. Counters, not counts: each step keeps how many parents it still waits
on, an expanded step how many of its own steps are open, the workflow how many top-level steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from services.gateway.workflows.launch import launch_step
from services.gateway.workflows.records import StepStatus, WorkflowStatus
from services.gateway.workflows.steps import insert_steps
from shared.workflows import WorkflowInvalid, expanded_steps

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer(__name__)

_OPEN_STEP = "status IN ('waiting', 'launched', 'expanded')"


@dataclass(frozen=True, slots=True)
class StepEnd:
    """A step's task or job ended (completed, failed or cancelled) with this result or error."""

    workflow_id: str
    key: str
    status: StepStatus
    result: Any = None
    error: str | None = None


async def steps_ended(connection: asyncpg.Connection, ends: Sequence[StepEnd]) -> None:
    """Record the ends and start what they let start, one workflow at a time, in id order (the
    lock order every caller keeps, so two trackers cannot deadlock)."""
    by_workflow: dict[str, list[StepEnd]] = {}
    for end in ends:
        by_workflow.setdefault(end.workflow_id, []).append(end)
    for workflow_id in sorted(by_workflow):
        with _TRACER.start_as_current_span(
            "workflow advance",
            attributes={
                "downlink.workflow_id": workflow_id,
                "downlink.steps": [end.key for end in by_workflow[workflow_id]],
            },
        ):
            run = await _Run.locked(connection, workflow_id)
            if run is None:
                continue
            for end in by_workflow[workflow_id]:
                await run.end(end.key, end.status, end.result, end.error)


async def launch_ready(
    connection: asyncpg.Connection, workflow_id: str, keys: Sequence[str]
) -> None:
    """Launch the steps `keys` of a workflow just written (they wait on nothing)."""
    run = await _Run.locked(connection, workflow_id)
    if run is not None:
        for key in keys:
            await run.launch(key)


@dataclass(slots=True)
class _Run:
    """One workflow's row, locked for the rest of the transaction."""

    connection: asyncpg.Connection
    workflow_id: str
    user_id: str
    status: WorkflowStatus
    allow_partial: bool
    trace_headers: dict[str, str]

    @classmethod
    async def locked(cls, connection: asyncpg.Connection, workflow_id: str) -> _Run | None:
        row = await connection.fetchrow(
            "SELECT user_id, status, allow_partial, trace_headers FROM workflows"
            " WHERE id = $1 FOR UPDATE",
            workflow_id,
        )
        if row is None:
            return None
        return cls(
            connection,
            workflow_id,
            str(row["user_id"]),
            WorkflowStatus(row["status"]),
            row["allow_partial"],
            dict(row["trace_headers"] or {}),
        )

    async def end(self, key: str, status: StepStatus, result: Any, error: str | None) -> None:
        """End step `key` and follow what that sets off (children, its owner, the workflow)."""
        pending = [(key, status, result, error)]
        while pending:
            key, status, result, error = pending.pop(0)
            if status is StepStatus.COMPLETED and await self._expanded(key, result):
                continue
            row = await self.connection.fetchrow(
                "UPDATE workflow_steps SET status = $3, result = $4::jsonb, error = $5,"
                " finished_at = now() WHERE workflow_id = $1 AND key = $2 AND"
                f" {_OPEN_STEP} RETURNING owner, children",
                self.workflow_id,
                key,
                status,
                result,
                error,
            )
            if row is None:
                continue  # ended already: a replay, or a cancel that came first
            pending += await self._children_of(key, status, row["children"])
            if row["owner"] is None:
                await self._top_level_ended()
            elif (owner_end := await self._expansion_step_ended(row["owner"])) is not None:
                pending.append(owner_end)

    async def _expanded(self, key: str, result: Any) -> bool:
        """True when the step's result is a workflow, now running in the step's place."""
        try:
            steps = expanded_steps(result)
        except WorkflowInvalid as exc:
            await self.end(key, StepStatus.FAILED, None, str(exc))
            return True
        if not steps:
            return False  # not a workflow (or an empty one: the step ends as it is)
        moved = await self.connection.fetchval(
            "UPDATE workflow_steps SET status = 'expanded', open_children = $3"
            " WHERE workflow_id = $1 AND key = $2 AND status = 'launched' RETURNING true",
            self.workflow_id,
            key,
            len(steps),
        )
        if moved:
            ready = await insert_steps(self.connection, self.workflow_id, steps, owner=key)
            for child in ready:
                await self.launch(child)
        return True

    async def _children_of(
        self, key: str, status: StepStatus, children: Sequence[str]
    ) -> list[tuple[str, StepStatus, Any, str | None]]:
        """Count the end down in each child; start those it was the last parent of. The ends
        of children that cannot run (a parent failed) are returned, to be followed in turn."""
        if not children:
            return []
        failed = int(status is not StepStatus.COMPLETED)
        rows = await self.connection.fetch(
            "UPDATE workflow_steps SET waiting_on = waiting_on - 1,"
            " failed_parents = failed_parents + $3"
            " WHERE workflow_id = $1 AND key = ANY($2::text[]) AND status = 'waiting'"
            " RETURNING key, waiting_on, failed_parents",
            self.workflow_id,
            list(children),
            failed,
        )
        skipped: list[tuple[str, StepStatus, Any, str | None]] = []
        for row in sorted(rows, key=lambda r: r["key"]):
            if row["waiting_on"] > 0:
                continue
            if self.status is not WorkflowStatus.RUNNING:
                skipped.append((row["key"], StepStatus.CANCELLED, None, "the workflow ended"))
            elif row["failed_parents"] and not self.allow_partial:
                reason = f"skipped: a step it runs after did not succeed ({key})"
                skipped.append((row["key"], StepStatus.SKIPPED, None, reason))
            else:
                await self.launch(row["key"])
        return skipped

    async def launch(self, key: str) -> None:
        problem = await launch_step(
            self.connection,
            workflow_id=self.workflow_id,
            user_id=self.user_id,
            key=key,
            trace_headers=self.trace_headers,
        )
        if problem is not None:
            log.warning(
                "workflow %s: step %s cannot run: %s",
                self.workflow_id,
                key,
                problem,
                extra={"workflow_id": self.workflow_id, "step": key},
            )
            await self.end(key, StepStatus.FAILED, None, problem)

    async def _expansion_step_ended(
        self, owner: str
    ) -> tuple[str, StepStatus, Any, str | None] | None:
        """When the last step an expansion made ends, its owner ends with its last steps'
        results (one of them as it is, several as a list in order)."""
        left = await self.connection.fetchval(
            "UPDATE workflow_steps SET open_children = open_children - 1"
            " WHERE workflow_id = $1 AND key = $2 AND status = 'expanded'"
            " RETURNING open_children",
            self.workflow_id,
            owner,
        )
        if left != 0:
            return None
        rows = await self.connection.fetch(
            "SELECT key, status, result, error FROM workflow_steps"
            " WHERE workflow_id = $1 AND owner = $2 ORDER BY position",
            self.workflow_id,
            owner,
        )
        failures = [r for r in rows if r["status"] != StepStatus.COMPLETED]
        last = await self._sinks(owner)
        results = [r["result"] for r in rows if r["key"] in last and r["status"] == "completed"]
        result = results[0] if len(last) == 1 and results else results
        if failures and not self.allow_partial:
            first = failures[0]
            error = f"step {first['key']} {first['status']}: {first['error'] or ''}".strip()
            return owner, StepStatus.FAILED, result, error
        return owner, StepStatus.COMPLETED, result, None

    async def _sinks(self, owner: str) -> set[str]:
        rows = await self.connection.fetch(
            "SELECT key FROM workflow_steps WHERE workflow_id = $1 AND owner = $2"
            " AND children = '{}'",
            self.workflow_id,
            owner,
        )
        return {r["key"] for r in rows}

    async def _top_level_ended(self) -> None:
        left = await self.connection.fetchval(
            "UPDATE workflows SET open_steps = open_steps - 1, updated_at = now()"
            " WHERE id = $1 RETURNING open_steps",
            self.workflow_id,
        )
        if left == 0 and self.status is WorkflowStatus.RUNNING:
            await self._finish()

    async def _finish(self) -> None:
        rows = await self.connection.fetch(
            "SELECT key, status, result, error, children FROM workflow_steps"
            " WHERE workflow_id = $1 AND owner IS NULL ORDER BY position",
            self.workflow_id,
        )
        result = {r["key"]: r["result"] for r in rows if not r["children"]}
        failures = [r for r in rows if r["status"] != StepStatus.COMPLETED]
        if not failures:
            status, error = WorkflowStatus.COMPLETED, None
        else:
            first = failures[0]
            status = WorkflowStatus.PARTIAL if self.allow_partial else WorkflowStatus.FAILED
            error = f"step {first['key']} {first['status']}: {first['error'] or ''}".strip()
        await self.connection.execute(
            "UPDATE workflows SET status = $2, result = $3::jsonb, error = $4,"
            " finished_at = now(), updated_at = now() WHERE id = $1",
            self.workflow_id,
            status,
            result,
            error,
        )
        self.status = status
        log.info("workflow %s finished: %s", self.workflow_id, status)
