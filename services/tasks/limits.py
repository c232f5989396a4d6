"""Fleet-wide limits a task asks for: `ctx.rate_limit` (calls per window), `ctx.concurrency`.

Both live in Redis, so they hold across every worker process. A rate limit is a sliding log:
per key, a sorted set of the start times of the calls granted (Redis server time). One script
drops the calls out of the window, then grants this one or answers how long until the oldest
leaves it, so a waiter sleeps exactly that long instead of polling. Concurrency is
shared.leases' slots: leased while held, they lapse once a dead holder stops renewing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from opentelemetry import trace

from shared.leases import LeasedSlots, cancel_was_swallowed, cancels_so_far

if TYPE_CHECKING:
    from redis.asyncio import Redis

tracer = trace.get_tracer("downlink.tasks")

RATE_KEY_PREFIX = "downlink:limit:rate:"
CONCURRENCY_KEY_PREFIX = "downlink:limit:concurrency:"
CONCURRENCY_WAITER_PREFIX = "downlink:limit:concurrency-waiter:"
# A holder that dies keeps its slot this long at most; a living one renews it every third.
CONCURRENCY_LEASE_S = 5.0

# KEYS[1] the key's log; ARGV: n, window in microseconds, this call's token. 0 when the call
# is granted (and logged), else the microseconds until the oldest call leaves the window.
_RATE = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local window_us = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_us - window_us)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now_us, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window_us / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window_us - now_us)
"""


class TaskLimits(LeasedSlots):
    """Rate limits and concurrency limits shared by every worker on `redis`.

    Use it as an async context manager: leaving it stops renewing the concurrency leases.
    Every caller of one key should pass the same `n` (and `per_s`).
    """

    def __init__(self, redis: Redis, *, lease_s: float = CONCURRENCY_LEASE_S) -> None:
        super().__init__(
            redis,
            key_prefix=CONCURRENCY_KEY_PREFIX,
            waiter_prefix=CONCURRENCY_WAITER_PREFIX,
            lease_s=lease_s,
            label="concurrency slots",
        )
        self._rate = redis.register_script(_RATE)
        # Callers of one key in this process ask Redis one at a time, first come first served.
        self._rate_queues: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def rate_limit(self, key: str, n: int, per_s: float = 1.0) -> None:
        """Return once one more call on `key` keeps it at `n` calls in any `per_s` window."""
        _check(key, n)
        if per_s <= 0:
            raise ValueError(f"per_s must be > 0, got {per_s}")
        token = uuid.uuid4().hex
        attributes: dict[str, str | float] = {
            "downlink.limit.key": key,
            "downlink.limit.n": n,
            "downlink.limit.per_s": per_s,
        }
        with tracer.start_as_current_span("task.rate_limit", attributes=attributes) as span:
            began = time.monotonic()
            async with self._rate_queues[key]:
                while True:
                    wait_s = await self._ask(key, n, per_s, token)
                    if not wait_s:
                        break
                    await asyncio.sleep(wait_s)
            span.set_attribute("downlink.limit.waited_s", time.monotonic() - began)

    async def _ask(self, key: str, n: int, per_s: float, token: str) -> float:
        """0 when the call is granted, else the seconds to wait before asking again."""
        cancels = cancels_so_far()
        wait_us = int(
            await self._rate(keys=[RATE_KEY_PREFIX + key], args=[n, int(per_s * 1e6), token])
        )
        if cancel_was_swallowed(cancels):
            if not wait_us:  # the caller will not make the call: its place goes to another
                await self._redis.zrem(RATE_KEY_PREFIX + key, token)
            raise asyncio.CancelledError
        return wait_us / 1e6

    @contextlib.asynccontextmanager
    async def concurrency(self, key: str, n: int) -> AsyncIterator[None]:
        """Hold one of `key`'s `n` slots for the block."""
        _check(key, n)
        attributes: dict[str, str | int] = {"downlink.limit.key": key, "downlink.limit.n": n}
        with tracer.start_as_current_span("task.concurrency", attributes=attributes) as span:
            began = time.monotonic()
            lease = await self.acquire(key, n)
            span.set_attribute("downlink.limit.waited_s", time.monotonic() - began)
        try:
            yield
        finally:
            await self.release(lease)


def _check(key: str, n: int) -> None:
    if not key:
        raise ValueError("a limit needs a non-empty key")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
