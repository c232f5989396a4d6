"""Telling task workers of cancelled tasks: a flag for a queued run, a message for a running one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared.streams import TASK_CANCEL_CHANNEL, task_cancelled_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis

log = logging.getLogger(__name__)


async def announce_task_cancels(redis: Redis, task_ids: Sequence[str], *, ttl_s: int) -> bool:
    """Set each task's cancelled flag and publish its id, in one round trip; False when Redis
    could not be told (logged: PostgreSQL holds the cancel, and a run that starts anyway ends
    with no effect on the record)."""
    if not task_ids:
        return True
    try:
        async with redis.pipeline(transaction=True) as pipe:
            for task_id in task_ids:
                pipe.set(task_cancelled_key(task_id), b"1", ex=ttl_s)
                pipe.publish(TASK_CANCEL_CHANNEL, task_id)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("%d task(s) cancelled, but Redis could not be told: %s", len(task_ids), exc)
        return False
    return True
