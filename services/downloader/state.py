"""Redis-backed ports of the downloader: finished files, taken names, cancelled jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.errors import JobCancelled
from shared.events import FileDownloaded
from shared.pipelining import RoundTrips
from shared.redis_client import KeyReads
from shared.streams import CANCEL_CHANNEL, cancelled_key, done_key, names_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.downloader.handlers import Claim
    from shared.ids import FileId, JobId

log = logging.getLogger(__name__)

_CLAIM_NAME = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if not owner then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return 'new'
elseif owner == ARGV[2] then
  return 'ours'
end
return 'taken'
"""


class RedisCompletions:
    """FileDownloaded events of finished files, kept for the retention period."""

    def __init__(self, redis: Redis, ttl_s: int, *, reads: KeyReads | None = None) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._decoder = msgspec.json.Decoder(FileDownloaded)
        # Concurrent downloads' lookups share one MGET, their records one pipeline.
        self._reads = reads or KeyReads(redis)
        self._records: RoundTrips[tuple[str, bytes], None] = RoundTrips(self._set_all)

    async def get(self, file_id: FileId) -> FileDownloaded | None:
        raw = await self._reads.get(done_key(file_id))
        return self._decoder.decode(raw) if raw else None

    async def put(self, event: FileDownloaded) -> None:
        await self._records.submit((done_key(event.file_id), msgspec.json.encode(event)))

    async def _set_all(self, records: list[tuple[str, bytes]]) -> list[None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, value in records:
                pipe.set(key, value, ex=self._ttl_s)
            await pipe.execute()
        return [None] * len(records)


class RedisNames:
    """One hash per job: filename -> file id."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        # EVALSHA: the script's text crosses the wire once, not with every file.
        self._claim = redis.register_script(_CLAIM_NAME)
        # Concurrent downloads' claims share one pipeline; each script still runs atomically.
        self._claims: RoundTrips[tuple[JobId, str, FileId], Claim] = RoundTrips(self._claim_all)

    async def claim(self, job_id: JobId, name: str, file_id: FileId) -> Claim:
        return await self._claims.submit((job_id, name, file_id))

    async def _claim_all(self, claims: list[tuple[JobId, str, FileId]]) -> list[Claim]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, name, file_id in claims:
                await self._claim(
                    keys=[names_key(job_id)], args=[name, file_id, self._ttl_s], client=pipe
                )
            answers = await pipe.execute()
        return [_claim_answer(answer) for answer in answers]


def _claim_answer(answer: object) -> Claim:
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    if text not in ("new", "ours", "taken"):
        raise RuntimeError(f"unexpected name claim answer {text!r}")
    return text  # type: ignore[return-value]


class CancelWatcher:
    """Aborts in-flight work of a job within moments of its cancel being published."""

    _REMEMBERED = 10_000

    def __init__(self, redis: Redis, *, reads: KeyReads | None = None) -> None:
        self._redis = redis
        # A file's start asks whether its job was cancelled; concurrent starts share one MGET
        # (with the completion lookups, when they share `reads`) instead of an EXISTS each.
        self._reads = reads or KeyReads(redis)
        self._tasks: defaultdict[str, set[asyncio.Task[object]]] = defaultdict(set)
        self._cancelled: OrderedDict[str, None] = OrderedDict()

    async def is_cancelled(self, job_id: JobId) -> bool:
        return job_id in self._cancelled or await self._reads.get(cancelled_key(job_id)) is not None

    @contextlib.asynccontextmanager
    async def watch(self, job_id: JobId) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._tasks[job_id].add(task)
        try:
            yield
        except asyncio.CancelledError:
            # Our own cancel (not a shutdown's): swallow it and report the job's cancellation.
            if job_id in self._cancelled and task.uncancel() == 0:
                raise JobCancelled(f"job {job_id} was cancelled") from None
            raise
        finally:
            self._tasks[job_id].discard(task)
            if not self._tasks[job_id]:
                del self._tasks[job_id]

    def cancel(self, job_id: str) -> None:
        self._cancelled[job_id] = None
        while len(self._cancelled) > self._REMEMBERED:
            self._cancelled.popitem(last=False)
        for task in list(self._tasks.get(job_id, ())):
            task.cancel()

    async def listen(self) -> None:
        """Follow the cancel channel until cancelled; reconnects after a Redis outage."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            job_id = message["data"].decode()
                            log.info("job %s cancelled: aborting its downloads", job_id)
                            self.cancel(job_id)
            except (RedisConnectionError, OSError) as exc:
                log.warning("cancel channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1)
