"""What a try must know before it runs (is its task cancelled, where did it get to), read for
all the tries starting together in one round trip."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.pipelining import RoundTrips
from shared.streams import task_cancelled_key, task_checkpoint_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.ids import TaskId


class RedisStarts:
    """services.tasks.handlers.TryStarts on Redis: one MGET of both keys of every try that
    starts while the previous MGET is out, instead of an EXISTS and a GET per try."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._lookups: RoundTrips[TaskId, tuple[bool, bytes | None]] = RoundTrips(self._get_all)

    async def lookup(self, task_id: TaskId) -> tuple[bool, bytes | None]:
        return await self._lookups.submit(task_id)

    async def _get_all(self, task_ids: list[TaskId]) -> list[tuple[bool, bytes | None]]:
        keys = [key for t in task_ids for key in (task_cancelled_key(t), task_checkpoint_key(t))]
        found = [v.encode() if isinstance(v, str) else v for v in await self._redis.mget(keys)]
        return [(found[n] is not None, found[n + 1]) for n in range(0, len(found), 2)]
