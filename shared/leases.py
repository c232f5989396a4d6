"""Leased slots for a whole fleet: at most `limit` holders of a name across every process.

Each name has a sorted set of slot tokens scored by lease expiry (Redis server time, so the
clocks of the processes never matter). Taking a slot is one script call that first drops the
expired leases, so a SIGKILLed process's slots free themselves once their lease runs out; a
living process renews the leases it holds from one background loop.

A slot given back is kept warm for a moment: the process's next holder of that name takes it
without a round trip (thousands of small files a second would otherwise pay two each). A slot
goes back to Redis once it has served this process for `_REUSE_S`, so a busy process cannot
keep its slots from the fleet's other processes for longer than that. The downloader's host
budget and the tasks' `ctx.concurrency` are both made of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from types import TracebackType

    from redis.asyncio import Redis

log = logging.getLogger(__name__)

# KEYS[1] the name's set, KEYS[2] who waits longest for it; ARGV: token, limit, lease ms,
# waiter ms. 1 when the slot is taken, else 0. A caller refused at the limit becomes the
# name's waiter unless another is; while one waits, nobody else takes a freed slot, so a
# process taking slot after slot cannot starve the others.
_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local waiter = redis.call('GET', KEYS[2])
if waiter and waiter ~= ARGV[1] then
  return 0
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
  return 0
end
if waiter then
  redis.call('DEL', KEYS[2])
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[3]))
return 1
"""
# KEYS[1] the name's set; ARGV: lease ms, then the tokens. Only leases still held move on
# (XX): one that lapsed stays gone rather than squeezing in over the limit.
_RENEW = """
local now = redis.call('TIME')
local until_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 0
"""
_FIRST_WAIT_S = 0.02
_MAX_WAIT_S = 0.5
_REUSE_S = 1.0  # how long one process may keep handing a slot to its own next holder
_LINGER_S = 0.05  # how long a slot given back waits warm for that next holder
# A waiter that stops asking (killed, cancelled) stops holding the others back after this.
_WAITER_MS = int(3 * _MAX_WAIT_S * 1000)


@dataclass(frozen=True, slots=True)
class Lease:
    """One slot held on `name`, taken from Redis at `taken_at` (monotonic seconds)."""

    name: str
    token: str
    taken_at: float = field(default_factory=time.monotonic)


class LeasedSlots:
    """At most `limit` holders of one name across every process sharing `redis`.

    Waiting is cheap: per name, only one waiter of a process asks Redis, backing off from 20 ms
    to 0.5 s, and a slot this process gives back wakes it at once. Close it (or leave its
    `async with`) to stop the lease renewal. Every caller of one name should pass one limit;
    `limit` is the one of callers that pass none.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str,
        waiter_prefix: str,
        limit: int | None = None,
        lease_s: float = 5.0,
        label: str = "slots",
    ) -> None:
        self._redis = redis
        self._limit = limit
        self._key_prefix = key_prefix
        self._waiter_prefix = waiter_prefix
        self._label = label
        self._lease_ms = max(1, int(lease_s * 1000))
        self._renew_every_s = lease_s / 3
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._held: dict[str, str] = {}  # token -> name
        self._queues: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._wakers: dict[str, asyncio.Future[None]] = {}  # name -> its one napping waiter
        # name -> slots given back and still held, each with when it was given back
        self._warm: defaultdict[str, list[tuple[Lease, float]]] = defaultdict(list)
        self._coolers: dict[str, asyncio.TimerHandle] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop renewing; slots still held lapse within a lease."""
        self._closed = True  # ends the loop even if redis-py swallows the cancel (see _try)
        for timer in self._coolers.values():
            timer.cancel()
        for name in list(self._warm):
            with contextlib.suppress(RedisError):
                await self._cool(name, idle_s=0.0)
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    @contextlib.asynccontextmanager
    async def slot(self, name: str, limit: int | None = None) -> AsyncIterator[Lease]:
        """Hold one of `name`'s slots for the block."""
        lease = await self.acquire(name, limit)
        try:
            yield lease
        finally:
            await self.release(lease)

    async def acquire(self, name: str, limit: int | None = None) -> Lease:
        """Wait for a slot on `name`; one round trip when one is free."""
        limit = self._limit if limit is None else limit
        if limit is None:
            raise TypeError("acquire needs a limit: these slots have no default one")
        warm = self._take_warm(name)
        if warm is not None:
            return warm
        lease = Lease(name, uuid.uuid4().hex)
        cancels = cancels_so_far()
        queue = self._queues[name]
        if not queue.locked() and await self._try(lease, limit, cancels):
            return lease
        async with queue:
            wait_s = _FIRST_WAIT_S
            while True:
                warm = self._take_warm(name)
                if warm is not None:
                    return warm
                if await self._try(lease, limit, cancels):
                    return lease
                await self._nap(name, wait_s * random.uniform(0.5, 1.0))
                wait_s = min(2 * wait_s, _MAX_WAIT_S)

    def _take_warm(self, name: str) -> Lease | None:
        warm = self._warm.get(name)
        return warm.pop()[0] if warm else None

    async def _nap(self, name: str, delay_s: float) -> None:
        """Sleep `delay_s`, or less if this process gives a slot of `name` back meanwhile."""
        # A bare future and a timer, since wait_for and timeout on 3.11 can swallow a cancel.
        waker = asyncio.get_running_loop().create_future()
        self._wakers[name] = waker
        timer = asyncio.get_running_loop().call_later(delay_s, _wake, waker)
        try:
            await waker
        finally:
            timer.cancel()
            if self._wakers.get(name) is waker:
                del self._wakers[name]

    async def release(self, lease: Lease) -> None:
        """Give the slot back: warm for this process's next holder of its name for a moment,
        then (or once it has served this process for `_REUSE_S`) to any waiter anywhere."""
        try:
            if self._closed or time.monotonic() - lease.taken_at >= _REUSE_S:
                self._held.pop(lease.token, None)
                await self._redis.zrem(self._key_prefix + lease.name, lease.token)
            else:
                self._warm[lease.name].append((lease, time.monotonic()))
                if lease.name not in self._coolers:
                    self._coolers[lease.name] = asyncio.get_running_loop().call_later(
                        _LINGER_S, self._start_cooling, lease.name
                    )
        finally:
            waker = self._wakers.get(lease.name)
            if waker is not None:
                _wake(waker)

    def _start_cooling(self, name: str) -> None:
        del self._coolers[name]
        cooling = asyncio.create_task(self._cool(name, idle_s=_LINGER_S))
        cooling.add_done_callback(self._log_failure)

    async def _cool(self, name: str, *, idle_s: float) -> None:
        """Give back to Redis the warm slots of `name` no holder took within `idle_s`."""
        now = time.monotonic()
        warm = self._warm.get(name, [])
        cold = [lease for lease, since in warm if now - since >= idle_s]
        self._warm[name] = [(lease, since) for lease, since in warm if now - since < idle_s]
        if self._warm[name] and name not in self._coolers and not self._closed:
            self._coolers[name] = asyncio.get_running_loop().call_later(
                _LINGER_S, self._start_cooling, name
            )
        if not self._warm[name]:
            del self._warm[name]
        for lease in cold:
            self._held.pop(lease.token, None)
        if cold:
            await self._redis.zrem(self._key_prefix + name, *(lease.token for lease in cold))

    async def _try(self, lease: Lease, limit: int, cancels: int) -> bool:
        if self._renewer is None and not self._closed:  # started by the first slot
            self._renewer = asyncio.create_task(self._renew_forever(), name=f"{self._label} renew")
        self._held[lease.token] = lease.name  # renewed from now on, should the script win
        taken = 0
        try:
            taken = await self._acquire(
                keys=[self._key_prefix + lease.name, self._waiter_prefix + lease.name],
                args=[lease.token, limit, self._lease_ms, _WAITER_MS],
            )
        finally:
            if not taken:  # refused, failed or cancelled: a slot taken anyway lapses unrenewed
                self._held.pop(lease.token, None)
        if cancel_was_swallowed(cancels):
            if taken:
                await self.release(lease)
            raise asyncio.CancelledError
        return bool(taken)

    async def _renew_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._renew_every_s)
            by_name: defaultdict[str, list[str]] = defaultdict(list)
            for token, name in list(self._held.items()):
                by_name[name].append(token)
            if not by_name:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for name, tokens in by_name.items():
                        await self._renew(
                            keys=[self._key_prefix + name],
                            args=[self._lease_ms, *tokens],
                            client=pipe,
                        )
                    await pipe.execute()
            except RedisError as exc:
                # Leases outlive a short blip; a long outage lets them lapse (fail open).
                log.warning("could not renew %s: %s", self._label, exc)

    def _log_failure(self, task: asyncio.Task[None]) -> None:
        # A slot that could not be given back lapses with its lease; the next acquire goes on.
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not give back %s: %s", self._label, task.exception())


def cancels_so_far() -> int:
    """How many cancels the running task has pending, for `cancel_was_swallowed` later."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def cancel_was_swallowed(cancels: int) -> bool:
    """Whether the running task was cancelled since `cancels_so_far()` said `cancels`.

    redis-py (8.1, Python 3.11) can swallow a cancel that lands mid-command; a waiter must not
    loop on past it.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > cancels


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)
