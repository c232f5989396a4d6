"""One connection budget per host for the whole fleet: leased slots in a Redis sorted set.

Each host has a sorted set of slot tokens scored by lease expiry (Redis server time, so the
clocks of the downloaders never matter). Taking a slot is one script call that first drops the
expired leases, so a SIGKILLed process's slots free themselves once their lease runs out; a
living process renews the leases it holds from one background loop.

A slot given back is kept warm for a moment: the process's next file for that host takes it
without a round trip (thousands of small files a second would otherwise pay two per file). A
slot goes back to Redis once it has served this process for `_REUSE_S`, so a busy process
cannot keep its slots from the fleet's other processes for longer than that.
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
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from types import TracebackType

    from redis.asyncio import Redis

log = logging.getLogger(__name__)

KEY_PREFIX = "downlink:host-slots:"
WAITER_PREFIX = "downlink:host-waiter:"

# KEYS[1] the host's set, KEYS[2] who waits longest for it; ARGV: token, limit, lease ms,
# waiter ms. 1 when the slot is taken, else 0. A caller refused at the limit becomes the
# host's waiter unless another is; while one waits, nobody else takes a freed slot, so a
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
# KEYS[1] the host's set; ARGV: lease ms, then the tokens. Only leases still held move on
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
_REUSE_S = 1.0  # how long one process may keep handing a slot to its own next file
_LINGER_S = 0.05  # how long a slot given back waits warm for that next file
# A waiter that stops asking (killed, cancelled) stops holding the others back after this.
_WAITER_MS = int(3 * _MAX_WAIT_S * 1000)


@dataclass(frozen=True, slots=True)
class Lease:
    """One slot held on `host`, taken from Redis at `taken_at` (monotonic seconds)."""

    host: str
    token: str
    taken_at: float = field(default_factory=time.monotonic)


class HostBudget:
    """At most `per_host` connections to one host across every process sharing `redis`.

    Waiting is cheap: per host, only one waiter of a process asks Redis, backing off from 20 ms
    to 0.5 s, and a slot this process gives back wakes it at once. Close it (or leave its
    `async with`) to stop the lease renewal.
    """

    def __init__(self, redis: Redis, per_host: int, *, lease_s: float = 5.0) -> None:
        self._redis = redis
        self._per_host = per_host
        self._lease_ms = max(1, int(lease_s * 1000))
        self._renew_every_s = lease_s / 3
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._held: dict[str, str] = {}  # token -> host
        self._queues: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._wakers: dict[str, asyncio.Future[None]] = {}  # host -> its one napping waiter
        # host -> slots given back and still held, each with when it was given back
        self._warm: defaultdict[str, list[tuple[Lease, float]]] = defaultdict(list)
        self._coolers: dict[str, asyncio.TimerHandle] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> HostBudget:
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
        for host in list(self._warm):
            with contextlib.suppress(RedisError):
                await self._cool(host, idle_s=0.0)
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[Lease]:
        """Hold one of `host`'s slots for the block."""
        lease = await self.acquire(host)
        try:
            yield lease
        finally:
            await self.release(lease)

    async def acquire(self, host: str) -> Lease:
        """Wait for a slot on `host`; one round trip when one is free."""
        key = host.lower()
        warm = self._take_warm(key)
        if warm is not None:
            return warm
        lease = Lease(key, uuid.uuid4().hex)
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        queue = self._queues[key]
        if not queue.locked() and await self._try(lease, cancels):
            return lease
        async with queue:
            wait_s = _FIRST_WAIT_S
            while True:
                warm = self._take_warm(key)
                if warm is not None:
                    return warm
                if await self._try(lease, cancels):
                    return lease
                await self._nap(key, wait_s * random.uniform(0.5, 1.0))
                wait_s = min(2 * wait_s, _MAX_WAIT_S)

    def _take_warm(self, host: str) -> Lease | None:
        warm = self._warm.get(host)
        return warm.pop()[0] if warm else None

    async def _nap(self, host: str, delay_s: float) -> None:
        """Sleep `delay_s`, or less if this process gives a slot of `host` back meanwhile."""
        # A bare future and a timer, since wait_for and timeout on 3.11 can swallow a cancel.
        waker = asyncio.get_running_loop().create_future()
        self._wakers[host] = waker
        timer = asyncio.get_running_loop().call_later(delay_s, _wake, waker)
        try:
            await waker
        finally:
            timer.cancel()
            if self._wakers.get(host) is waker:
                del self._wakers[host]

    async def release(self, lease: Lease) -> None:
        """Give the slot back: warm for this process's next file on its host for a moment,
        then (or once it has served this process for `_REUSE_S`) to any waiter anywhere."""
        try:
            if self._closed or time.monotonic() - lease.taken_at >= _REUSE_S:
                self._held.pop(lease.token, None)
                await self._redis.zrem(KEY_PREFIX + lease.host, lease.token)
            else:
                self._warm[lease.host].append((lease, time.monotonic()))
                if lease.host not in self._coolers:
                    self._coolers[lease.host] = asyncio.get_running_loop().call_later(
                        _LINGER_S, self._start_cooling, lease.host
                    )
        finally:
            waker = self._wakers.get(lease.host)
            if waker is not None:
                _wake(waker)

    def _start_cooling(self, host: str) -> None:
        del self._coolers[host]
        cooling = asyncio.create_task(self._cool(host, idle_s=_LINGER_S))
        cooling.add_done_callback(_log_failure)

    async def _cool(self, host: str, *, idle_s: float) -> None:
        """Give back to Redis the warm slots of `host` no file took within `idle_s`."""
        now = time.monotonic()
        warm = self._warm.get(host, [])
        cold = [lease for lease, since in warm if now - since >= idle_s]
        self._warm[host] = [(lease, since) for lease, since in warm if now - since < idle_s]
        if self._warm[host] and host not in self._coolers and not self._closed:
            self._coolers[host] = asyncio.get_running_loop().call_later(
                _LINGER_S, self._start_cooling, host
            )
        if not self._warm[host]:
            del self._warm[host]
        for lease in cold:
            self._held.pop(lease.token, None)
        if cold:
            await self._redis.zrem(KEY_PREFIX + host, *(lease.token for lease in cold))

    async def _try(self, lease: Lease, cancels: int) -> bool:
        if self._renewer is None and not self._closed:  # started by the first slot
            self._renewer = asyncio.create_task(self._renew_forever(), name="host-budget-renew")
        self._held[lease.token] = lease.host  # renewed from now on, should the script win
        taken = 0
        try:
            taken = await self._acquire(
                keys=[KEY_PREFIX + lease.host, WAITER_PREFIX + lease.host],
                args=[lease.token, self._per_host, self._lease_ms, _WAITER_MS],
            )
        finally:
            if not taken:  # refused, failed or cancelled: a slot taken anyway lapses unrenewed
                self._held.pop(lease.token, None)
        task = asyncio.current_task()
        if task is not None and task.cancelling() > cancels:
            # redis-py (8.1, Python 3.11) can swallow a cancel that lands mid-command; a
            # waiter must not loop on past it.
            if taken:
                await self.release(lease)
            raise asyncio.CancelledError
        return bool(taken)

    async def _renew_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._renew_every_s)
            by_host: defaultdict[str, list[str]] = defaultdict(list)
            for token, host in list(self._held.items()):
                by_host[host].append(token)
            if not by_host:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for host, tokens in by_host.items():
                        await self._renew(
                            keys=[KEY_PREFIX + host], args=[self._lease_ms, *tokens], client=pipe
                        )
                    await pipe.execute()
            except RedisError as exc:
                # Leases outlive a short blip; a long outage lets them lapse (fail open).
                log.warning("could not renew host slots: %s", exc)


def _wake(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


def _log_failure(task: asyncio.Task[None]) -> None:
    # A slot that could not be given back lapses with its lease; the next acquire goes on.
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not give back host slots: %s", task.exception())
