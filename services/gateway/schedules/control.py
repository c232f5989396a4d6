"""A schedule's buttons, pause, resume and run now: each one sequence (lock the row, change it,
wake the relay) that the JSON API and the dashboard both call."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from opentelemetry import trace

from services.gateway.schedules import cadence
from services.gateway.schedules.firing import fire
from services.gateway.schedules.queries import get_schedule, record_run, set_paused

if TYPE_CHECKING:
    import asyncpg

    from services.gateway.outbox import OutboxRelay
    from services.gateway.schedules.records import Schedule
    from shared.ids import UserId

log = logging.getLogger(__name__)


async def pause_schedule(pool: asyncpg.Pool, owner: UserId, schedule_id: str) -> Schedule:
    """Stop firing the schedule until it is resumed (pausing a paused one changes nothing)."""
    async with pool.acquire() as connection, connection.transaction():
        found = await get_schedule(connection, owner, schedule_id, for_update=True)
        return await set_paused(
            connection, found.schedule_id, paused=True, next_run_at=found.next_run_at
        )


async def resume_schedule(pool: asyncpg.Pool, owner: UserId, schedule_id: str) -> Schedule:
    """Fire again from the first run after now: runs that fell while it was paused are not
    made up for, whatever its missed-run policy."""
    async with pool.acquire() as connection, connection.transaction():
        found = await get_schedule(connection, owner, schedule_id, for_update=True)
        if not found.paused:
            return found
        next_run_at = cadence.first_run(found.cadence, datetime.now(UTC))
        return await set_paused(
            connection, found.schedule_id, paused=False, next_run_at=next_run_at
        )


async def run_schedule_now(
    pool: asyncpg.Pool, owner: UserId, schedule_id: str, *, relay: OutboxRelay
) -> tuple[Schedule, str]:
    """Enqueue one run now, paused or not, the cadence going on as it was; the schedule and
    the task (or workflow) id of the run."""
    async with pool.acquire() as connection, connection.transaction():
        found = await get_schedule(connection, owner, schedule_id, for_update=True)
        task_id = await fire(connection, found, datetime.now(UTC))
        await record_run(connection, found.schedule_id, task_id=task_id, next_run_at=None)
    relay.wake()
    span = trace.get_current_span()
    span.set_attribute("downlink.schedule_id", found.schedule_id)
    span.set_attribute("downlink.task_id", task_id)
    log.info(
        "schedule %s run now: task %s %s",
        found.schedule_id,
        found.task,
        task_id,
        extra={"schedule_id": found.schedule_id, "task_id": task_id},
    )
    return found, task_id
