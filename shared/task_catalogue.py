"""The task types live workers registered, read from Redis: the whole list, or by name.

Workers write `downlink:task-types:{consumer}` with each heartbeat (services.tasks.registry),
so this is what can run right now. Enqueueing reads the types through `Catalogue`, one
short-lived copy per process, since a registry scan per request walks the whole keyspace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgspec

from shared.redis_client import hashes_under
from shared.streams import TASK_TYPES_KEY_PREFIX
from shared.task_types import TaskType, UnknownTaskType

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

# How stale this gateway's copy of the registry may be: a worker that just stopped may still be
# found for this long (its tasks wait in their lane); one that just registered is found at once.
CATALOGUE_TTL_S = 1.0


_DECODER = msgspec.json.Decoder(TaskType)


async def task_types(redis: Redis) -> list[TaskType]:
    """Every task a live worker registered, one entry per distinct definition, by name.

    Workers that registered one name with different policies or signatures are all listed
    (and a warning logged): which of them runs a task is up to the queue.
    """
    hashes = await hashes_under(redis, TASK_TYPES_KEY_PREFIX)
    distinct: dict[bytes, TaskType] = {}
    for raw in hashes:
        for value in (raw or {}).values():
            try:
                found = _DECODER.decode(value)
            except msgspec.DecodeError:
                continue  # another version's shape: nothing this gateway can check against
            definition = msgspec.json.encode(
                [found.name, found.queue, found.policy, found.args_schema]
            )
            distinct.setdefault(definition, found)
    listed = sorted(distinct.values(), key=lambda t: (t.name, t.queue, t.worker))
    names = [t.name for t in listed]
    for name in sorted({n for n in names if names.count(n) > 1}):
        log.warning("task %s is registered with different policies or signatures", name)
    return listed


class Catalogue:
    """The registered task types by name, read from Redis at most once per `ttl_s`.

    A name missing from the copy is looked up in a read begun after the question, so a worker
    that registered a moment ago is found; concurrent questions share one read.
    """

    def __init__(self, redis: Redis, *, ttl_s: float = CATALOGUE_TTL_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._by_name: dict[str, TaskType] = {}
        self._read_at = -float("inf")
        self._reading: asyncio.Future[dict[str, TaskType]] | None = None
        self._reading_since = -float("inf")

    async def task_type(self, name: str) -> TaskType:
        """The registered type of `name`; UnknownTaskType when no live worker has it."""
        asked_at = time.monotonic()
        found = (await self._types(not_before=asked_at - self._ttl_s)).get(name)
        if found is None:
            found = (await self._types(not_before=asked_at)).get(name)
        if found is None:
            raise UnknownTaskType(name)
        return found

    async def _types(self, *, not_before: float) -> dict[str, TaskType]:
        """A copy read no earlier than `not_before` (monotonic), reading Redis if need be."""
        if self._read_at >= not_before:
            return self._by_name
        if self._reading is None or self._reading_since < not_before:
            self._reading_since = time.monotonic()
            self._reading = asyncio.ensure_future(self._read(self._reading_since))
            self._reading.add_done_callback(self._forget_failed)
        # Shielded: one caller's cancelled request must not fail the read the others wait on.
        return await asyncio.shield(self._reading)

    def _forget_failed(self, reading: asyncio.Future[dict[str, TaskType]]) -> None:
        # A failed read (Redis down) is not shared with later questions: they read again.
        if self._reading is reading and (reading.cancelled() or reading.exception() is not None):
            self._reading = None

    async def _read(self, started: float) -> dict[str, TaskType]:
        by_name: dict[str, TaskType] = {}
        for found in await task_types(self._redis):
            by_name.setdefault(found.name, found)
        if started >= self._read_at:
            self._by_name, self._read_at = by_name, started
        return by_name
