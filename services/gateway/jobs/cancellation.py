"""Telling downloaders a job was cancelled: a flag for queued work, a message for running work."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared.streams import CANCEL_CHANNEL, cancelled_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.ids import JobId

log = logging.getLogger(__name__)


async def announce_cancel(redis: Redis, job_id: JobId, *, ttl_s: int) -> bool:
    """Set the job's cancelled flag and publish its id; False when Redis could not be told.

    PostgreSQL already records the cancellation, and the tracker ignores whatever the job's
    files do afterwards, so a Redis failure here only means work that could have been skipped
    runs to no effect: it is logged, not raised.
    """
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(cancelled_key(job_id), b"1", ex=ttl_s)
            pipe.publish(CANCEL_CHANNEL, job_id)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("job %s cancelled, but Redis could not be told: %s", job_id, exc)
        return False
    return True
