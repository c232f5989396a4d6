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
