"""The workers' copy of each task's last checkpoint: one Redis key per task, kept as long as
the task's history (DOWNLINK_RETENTION_DAYS); PostgreSQL keeps the record (TaskCheckpointed).
A try reads it as it starts (services.tasks.starts, with the cancel flag)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared.pipelining import RoundTrips
from shared.streams import task_checkpoint_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.ids import TaskId

log = logging.getLogger(__name__)


class RedisCheckpoints:
    """services.tasks.context.CheckpointStore on Redis."""

    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        # Tasks ending together drop their copies in one DEL.
        self._drops: RoundTrips[str, None] = RoundTrips(self._delete_all)

    async def save(self, task_id: TaskId, state: bytes) -> None:
        await self._redis.set(task_checkpoint_key(task_id), state, ex=self._ttl_s)

    async def forget(self, task_id: TaskId) -> None:
        """Drop the copy of a task that succeeded; failing to only leaves it to expire."""
        try:
            await self._drops.submit(task_checkpoint_key(task_id))
        except (RedisError, OSError) as exc:
            log.warning("could not drop the checkpoint of task %s: %s", task_id, exc)

    async def _delete_all(self, keys: list[str]) -> list[None]:
        await self._redis.delete(*keys)
        return [None] * len(keys)
