"""Cancelled tasks: a queued or reclaimed run of one is skipped, a running one aborted.

What this watcher heard on the cancel channel answers at once; a try that starts still reads
the task's cancel flag (services.tasks.starts), for cancels sent before the worker listened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from redis.exceptions import ConnectionError as RedisConnectionError

from shared.errors import JobCancelled
from shared.streams import TASK_CANCEL_CHANNEL

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class TaskCancellations:
    """Follows the task cancel channel and cancels the runs of the tasks it names."""

    _REMEMBERED = 10_000

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._runs: defaultdict[str, set[asyncio.Task[object]]] = defaultdict(set)
        self._cancelled: OrderedDict[str, None] = OrderedDict()

    def knows_cancelled(self, task_id: str) -> bool:
        """Whether a cancel of the task was heard here (no Redis asked)."""
        return task_id in self._cancelled

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[None]:
        run = asyncio.current_task()
        assert run is not None
        self._runs[task_id].add(run)
        try:
            yield
        except asyncio.CancelledError:
            # Our own cancel (not a shutdown's): report the task's cancellation instead.
            if task_id in self._cancelled and run.uncancel() == 0:
                raise JobCancelled(f"task {task_id} was cancelled") from None
            raise
        finally:
            self._runs[task_id].discard(run)
            if not self._runs[task_id]:
                del self._runs[task_id]

    def cancel(self, task_id: str) -> None:
        self._cancelled[task_id] = None
        while len(self._cancelled) > self._REMEMBERED:
            self._cancelled.popitem(last=False)
        for run in list(self._runs.get(task_id, ())):
            run.cancel()

    async def listen(self) -> None:
        """Follow the cancel channel until cancelled; resubscribes after a Redis outage."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(TASK_CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            task_id = message["data"].decode()
                            log.info("task %s cancelled", task_id, extra={"task_id": task_id})
                            self.cancel(task_id)
            except (RedisConnectionError, OSError) as exc:
                log.warning("task cancel channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1)
