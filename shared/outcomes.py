"""How a consumer settles an entry: acknowledged, retried later, or dead-lettered.

This is the only code that acknowledges. FastStream's nack/reject do nothing on Redis Streams,
so retries (a delayed re-publish with backoff) and dead letters are built here on redis-py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from faststream.redis.parser import BinaryMessageFormatV1

from shared import metrics
from shared.deliveries import (
    ATTEMPT_HEADER,
    ConsumerPolicy,
    ConsumerStats,
    DeadHook,
    DeadLetter,
    Delivery,
    RetryHook,
)
from shared.errors import PermanentError
from shared.pipelining import RoundTrips
from shared.streams import DEAD_STREAM, DELAYED_KEY

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

# Moves due retries back onto their stream in one atomic step, so a crash between the two
# writes can neither lose nor duplicate a retry. Member: stream name, "\n", the stream frame.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local sep = string.find(member, '\\n', 1, true)
  redis.call('XADD', string.sub(member, 1, sep - 1), '*', '__data__', string.sub(member, sep + 1))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""


@dataclass
class Outcomes:
    """Settles the entries of one consumer (`consumer` in `group`)."""

    redis: Redis
    group: str
    consumer: str
    policy: ConsumerPolicy
    stats: ConsumerStats
    on_dead: DeadHook | None = None
    on_retry: RetryHook | None = None

    def __post_init__(self) -> None:
        self._acks: RoundTrips[tuple[str, str], None] = RoundTrips(self._send_acks)

    async def ack(self, delivery: Delivery) -> None:
        # Shielded: a shutdown arriving now must not leave done work unacknowledged.
        await asyncio.shield(self._acks.submit((delivery.stream, delivery.entry_id)))

    async def ack_all(self, deliveries: Sequence[Delivery]) -> None:
        await asyncio.shield(self._send_acks([(d.stream, d.entry_id) for d in deliveries]))

    async def _send_acks(self, entries: list[tuple[str, str]]) -> list[None]:
        """One XACK per stream for all of `entries`, in one round trip."""
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id in entries:
            by_stream.setdefault(stream, []).append(entry_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xack(stream, self.group, *ids)
            await pipe.execute()
        return [None] * len(entries)

    async def retry_later(
        self,
        delivery: Delivery,
        frame: bytes,
        retry_after_s: float | None,
        error: BaseException,
    ) -> None:
        delay_s = self.policy.backoff_s(delivery.attempt, retry_after_s)
        headers = {**delivery.headers, ATTEMPT_HEADER: str(delivery.attempt)}
        new_frame = await BinaryMessageFormatV1.encode(
            message=delivery.body,
            reply_to=None,
            headers=headers,
            correlation_id=str(headers.get("correlation_id", delivery.entry_id)),
        )
        member = delivery.stream.encode() + b"\n" + new_frame
        log.info(
            "retrying %s entry %s in %.1fs (attempt %d of %d)",
            delivery.stream,
            delivery.entry_id,
            delay_s,
            delivery.attempt,
            self.policy.max_tries,
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(DELAYED_KEY, {member: time.time() + delay_s})
            pipe.xack(delivery.stream, self.group, delivery.entry_id)
            await asyncio.shield(pipe.execute())
        self.stats.retried += 1
        metrics.RETRIES.labels(self.group, delivery.stream).inc()
        if self.on_retry is not None:
            try:
                await self.on_retry(delivery, error, delay_s)
            except Exception:
                # The retry is scheduled already; a hook that fails only loses its report.
                log.exception(
                    "retry hook failed for %s entry %s", delivery.stream, delivery.entry_id
                )

    async def dead_letter(self, delivery: Delivery, error: BaseException) -> None:
        log.warning(
            "dead-lettering %s entry %s after %d tries: %s",
            delivery.stream,
            delivery.entry_id,
            delivery.attempt,
            error,
        )
        if self.on_dead is not None:
            try:
                await self.on_dead(delivery, error)
            except PermanentError as hook_error:
                # A poison body cannot be described by its service; the dead letter still is.
                log.warning("dead-letter hook refused %s: %s", delivery.entry_id, hook_error)
        letter = DeadLetter(
            stream=delivery.stream,
            group=self.group,
            entry_id=delivery.entry_id,
            error=f"{type(error).__name__}: {error}",
            attempts=delivery.attempt,
            consumer=self.consumer,
            failed_at=time.time(),
            body=delivery.body.decode("utf-8", "replace"),
            headers={str(k): str(v) for k, v in delivery.headers.items()},
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(DEAD_STREAM, {b"letter": msgspec.json.encode(letter)})
            pipe.xack(delivery.stream, self.group, delivery.entry_id)
            await asyncio.shield(pipe.execute())
        self.stats.failed += 1
        self.stats.dead += 1
        metrics.DEAD_LETTERED.labels(self.group, delivery.stream).inc()

    async def move_due_retries(self) -> None:
        await self.redis.eval(_MOVE_DUE, 1, DELAYED_KEY, time.time())
