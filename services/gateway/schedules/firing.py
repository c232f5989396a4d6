"""Firing schedules: what one run creates (`fire`), and one pass over the due schedules, a
transaction per schedule (`fire_due`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import asyncpg
from opentelemetry import trace
from opentelemetry.context import Context

from services.gateway.schedules import cadence
from services.gateway.schedules.queries import next_due, record_run
from services.gateway.tasks.enqueueing import enqueue
from services.gateway.tasks.records import NewTask
from services.gateway.workflows.submission import submit_workflow
from shared.postgres import DATABASE_DOWN
from shared.telemetry import trace_headers
from shared.workflows import ResolvedStep, named_step_key

if TYPE_CHECKING:
    from datetime import datetime

    from opentelemetry.trace import Tracer

    from services.gateway.schedules.records import Schedule

log = logging.getLogger(__name__)

# Failures of the database itself end the pass: the scheduler waits them out.
OUTAGES: tuple[type[BaseException], ...] = (*DATABASE_DOWN, OSError, asyncpg.InterfaceError)


def run_key(schedule_id: str, run_for: datetime) -> str:
    """The Idempotency-Key of a schedule's run at `run_for`: two firers of one run make one task."""
    return f"schedule:{schedule_id}:{run_for.isoformat(timespec='microseconds')}"


async def fire(connection: asyncpg.Connection, schedule: Schedule, run_for: datetime) -> str:
    """Enqueue the schedule's run at `run_for` (the caller's transaction); the id of the task
    it created (or, run twice, the one created before): for a @workflow, its first step's."""
    span_context = trace.get_current_span().get_span_context()
    trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else None
    if schedule.workflow:
        return await _start_workflow(connection, schedule, run_for, trace_id)
    enqueued = await enqueue(
        connection,
        NewTask(
            user_id=schedule.user_id,
            task=schedule.task,
            queue=schedule.queue,
            args=schedule.args,
            priority=schedule.priority,
            idempotency_key=run_key(schedule.schedule_id, run_for),
            unique=schedule.unique,
        ),
        trace_id=trace_id,
        trace_headers=trace_headers(),
    )
    return enqueued.task_id


async def _start_workflow(
    connection: asyncpg.Connection, schedule: Schedule, run_for: datetime, trace_id: str | None
) -> str:
    builder = ResolvedStep(
        key=named_step_key(schedule.task),
        kind="task",
        task=schedule.task,
        args=schedule.args,
        after=[],
        input=None,
        queue=schedule.queue,
        priority=schedule.priority,
    )
    submitted = await submit_workflow(
        connection,
        user_id=schedule.user_id,
        name=schedule.task,
        args=schedule.args,
        steps=[builder],
        allow_partial=False,
        idempotency_key=run_key(schedule.schedule_id, run_for),
        trace_id=trace_id,
        trace_headers=trace_headers(),
    )
    await connection.execute(
        "UPDATE schedules SET last_workflow_id = $2 WHERE id = $1",
        schedule.schedule_id,
        submitted.workflow_id,
    )
    task_id = await connection.fetchval(
        "SELECT task_id::text FROM workflow_steps WHERE workflow_id = $1 AND key = $2",
        submitted.workflow_id,
        builder.key,
    )
    return str(task_id)


async def fire_due(pool: asyncpg.Pool, tracer: Tracer) -> int:
    """Fire every schedule due now, each in a transaction of its own; the runs enqueued.

    A schedule whose firing fails for another reason than an outage is left due (its run is
    tried again next pass) and skipped for the rest of this one, so it holds up no other.
    """
    fired = 0
    failed: list[str] = []
    while True:
        current: str | None = None
        try:
            async with pool.acquire() as connection, connection.transaction():
                due = await next_due(connection, failed)
                if due is None:
                    return fired
                schedule, now = due
                current = schedule.schedule_id
                if await _fire_one(connection, schedule, now, tracer):
                    fired += 1
        except OUTAGES:
            raise
        except Exception:
            if current is None:
                raise
            log.exception("schedule %s: firing failed; tried again next pass", current)
            failed.append(current)


async def _fire_one(
    connection: asyncpg.Connection, schedule: Schedule, now: datetime, tracer: Tracer
) -> bool:
    """Fire the run the missed-run policy asks for, if any, and move the schedule on."""
    planned = cadence.plan(schedule.cadence, schedule.missed, schedule.next_run_at, now)
    if planned.run_for is None:
        await record_run(
            connection, schedule.schedule_id, task_id=None, next_run_at=planned.next_run_at
        )
        log.info(
            "schedule %s: runs since %s missed, skipped; next at %s",
            schedule.schedule_id,
            schedule.next_run_at.isoformat(),
            planned.next_run_at.isoformat(),
            extra={"schedule_id": schedule.schedule_id, "missed": str(schedule.missed)},
        )
        return False
    with tracer.start_as_current_span(
        "schedule fire",
        # A root of its own: the run is the start of its task's trace.
        context=Context(),
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "downlink.schedule_id": schedule.schedule_id,
            "downlink.task": schedule.task,
            "downlink.run_for": planned.run_for.isoformat(),
        },
    ) as span:
        task_id = await fire(connection, schedule, planned.run_for)
        span.set_attribute("downlink.task_id", task_id)
        await record_run(
            connection, schedule.schedule_id, task_id=task_id, next_run_at=planned.next_run_at
        )
        log.info(
            "schedule %s fired: task %s %s for %s; next at %s",
            schedule.schedule_id,
            schedule.task,
            task_id,
            planned.run_for.isoformat(),
            planned.next_run_at.isoformat(),
            extra={
                "schedule_id": schedule.schedule_id,
                "task_id": task_id,
                "task": schedule.task,
                "late_s": round((now - planned.run_for).total_seconds(), 3),
            },
        )
    return True
