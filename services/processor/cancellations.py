"""Which jobs are cancelled, read from the markers the gateway sets in Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.streams import cancelled_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.ids import JobId


class RedisCancellations:
    """A job is cancelled while its `downlink:cancelled:{job}` key exists."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def is_cancelled(self, job_id: JobId) -> bool:
        return bool(await self._redis.exists(cancelled_key(job_id)))
