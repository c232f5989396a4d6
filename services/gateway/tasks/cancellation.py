"""Telling task workers of cancelled tasks (a flag for a queued run, a message for a running
one), and cancelling every open task a filter picks, the record first."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from services.gateway.tasks.queries import cancel_open_tasks
from services.gateway.tasks.records import OPEN_STATUSES
from services.gateway.tasks.selection import matching_tasks
from shared.streams import TASK_CANCEL_CHANNEL, task_cancelled_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from asyncpg import Pool
    from redis.asyncio import Redis

    from services.gateway.tasks.selection import TaskFilter
    from shared.ids import UserId

log = logging.getLogger(__name__)


# Cancel flags and messages per Redis round trip (a purge may cancel a whole queue).
ANNOUNCE_BATCH = 1000


async def announce_task_cancels(redis: Redis, task_ids: Sequence[str], *, ttl_s: int) -> bool:
    """Set each task's cancelled flag (read as a try starts) and publish its id (heard by a
    worker running it), a round trip per thousand; False when Redis could not be told (logged:
    PostgreSQL holds the cancel, and a run that starts anyway changes nothing on record)."""
    try:
        for start in range(0, len(task_ids), ANNOUNCE_BATCH):
            async with redis.pipeline(transaction=False) as pipe:
                for task_id in task_ids[start : start + ANNOUNCE_BATCH]:
                    pipe.set(task_cancelled_key(task_id), b"1", ex=ttl_s)
                    pipe.publish(TASK_CANCEL_CHANNEL, task_id)
                await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("%d task(s) cancelled, but Redis could not be told: %s", len(task_ids), exc)
        return False
    return True


class TasksCancelled(msgspec.Struct, frozen=True, kw_only=True):
    """The open tasks that matched, those cancelled, and how many were past `limit`."""

    matched: int
    cancelled: int
    remaining: int


async def cancel_tasks_matching(
    owner: UserId | None,
    wanted: TaskFilter,
    *,
    limit: int,
    pool: Pool,
    redis: Redis,
    ttl_s: int,
) -> TasksCancelled:
    """Cancel the open tasks matching `wanted`, oldest first, at most `limit`, as one task's
    cancel does; `owner` None reaches every user's (admins)."""
    picked, total = await matching_tasks(pool, owner, wanted, statuses=OPEN_STATUSES, limit=limit)
    async with pool.acquire() as connection, connection.transaction():
        # Locked in id order, so two bulk cancels over overlapping sets cannot deadlock.
        await connection.execute(
            "SELECT 1 FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", picked
        )
        ended = await cancel_open_tasks(connection, picked)
    cancelled = [row["id"] for row in ended]
    # After the commit: PostgreSQL is the record; the flag and the message only hurry it.
    await announce_task_cancels(redis, cancelled, ttl_s=ttl_s)
    log.info("%d of %d matching tasks cancelled", len(cancelled), total)
    return TasksCancelled(matched=total, cancelled=len(cancelled), remaining=total - len(picked))
