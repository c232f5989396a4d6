"""The fleet-wide host budget on real Redis: limits across instances, leases, cheap waiting."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from services.downloader.budget import KEY_PREFIX, HostBudget

if TYPE_CHECKING:
    from redis.asyncio import Redis

# A process that takes two slots on "dead.test", says so, and hangs until it is killed.
_HOLDER = """
import asyncio, sys
from redis.asyncio import Redis
from services.downloader.budget import HostBudget

async def main() -> None:
    budget = HostBudget(Redis.from_url(sys.argv[1]), 2, lease_s=1.0)
    await budget.acquire("dead.test")
    await budget.acquire("dead.test")
    print("held", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_the_limit_holds_across_budgets_sharing_redis(redis: Redis) -> None:
    # Two budgets on one Redis stand for two downloader processes.
    budgets = [HostBudget(redis, 2), HostBudget(redis, 2)]
    inside = {"a.test": 0, "b.test": 0}
    peak = {"a.test": 0, "b.test": 0}

    async def fetch(budget: HostBudget, host: str) -> None:
        key = host.lower()
        async with budget.slot(host):
            inside[key] += 1
            peak[key] = max(peak[key], inside[key])
            await asyncio.sleep(0.02)
            inside[key] -= 1

    try:
        await asyncio.gather(
            *(fetch(budgets[i % 2], "a.test") for i in range(8)),
            *(fetch(budgets[0], "A.TEST") for _ in range(2)),  # host names are case-insensitive
            *(fetch(budgets[1], "b.test") for _ in range(3)),
        )
    finally:
        for budget in budgets:
            await budget.close()
    assert peak == {"a.test": 2, "b.test": 2}
    assert await redis.zcard(KEY_PREFIX + "a.test") == 0


async def test_a_host_at_its_limit_does_not_hold_up_others(redis: Redis) -> None:
    async with (
        HostBudget(redis, 1) as budget,
        budget.slot("slow.test"),
        asyncio.timeout(1),
        budget.slot("fast.test"),
    ):
        pass


async def test_a_held_lease_is_renewed_and_a_killed_holders_lease_lapses(
    redis: Redis, redis_url: str
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.to_thread(holder.stdout.readline) == "held\n"
        async with HostBudget(redis, 2, lease_s=1.0) as budget:
            # Renewed: still full after twice its lease.
            await asyncio.sleep(2.0)
            assert await redis.zcard(KEY_PREFIX + "dead.test") == 2
            holder.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            async with asyncio.timeout(5), budget.slot("dead.test"), budget.slot("dead.test"):
                freed_after_s = time.monotonic() - killed_at
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert freed_after_s < 1.0 + 1.0  # one lease, and the waiter's back-off


async def test_waiting_is_cheap_and_a_local_release_wakes_at_once(redis: Redis) -> None:
    async with HostBudget(redis, 1) as budget:
        lease = await budget.acquire("busy.test")
        waiters = [asyncio.create_task(budget.acquire("busy.test")) for _ in range(20)]
        await asyncio.sleep(0.1)  # each tried once; now one of them asks, backing off
        before = await _script_calls(redis)
        await asyncio.sleep(2.0)
        assert await _script_calls(redis) - before <= 10
        released_at = time.monotonic()
        await budget.release(lease)
        done, _ = await asyncio.wait(waiters, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        assert time.monotonic() - released_at < 0.1
        assert len(done) == 1
        first = done.pop()
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await budget.release(first.result())
        # Cancelled waiters leave nothing behind.
        assert await redis.zcard(KEY_PREFIX + "busy.test") == 0


async def _script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def _script_and_zrem_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("evalsha", "eval", "zrem")
    )


async def test_back_to_back_files_reuse_a_warm_slot_without_round_trips(redis: Redis) -> None:
    async with HostBudget(redis, 4) as budget:
        before = await _script_and_zrem_calls(redis)
        for _ in range(200):
            async with budget.slot("busy.test"):
                assert await redis.zcard(KEY_PREFIX + "busy.test") <= 4
        during = await _script_and_zrem_calls(redis) - before
        # Two per file without reuse (400); a slot goes back to Redis once a second.
        assert during < 40
        await asyncio.sleep(0.2)  # past the linger: the warm slot went back on its own
        assert await redis.zcard(KEY_PREFIX + "busy.test") == 0


async def test_a_busy_process_hands_its_slot_to_another_within_the_reuse_limit(
    redis: Redis,
) -> None:
    busy, waiting = HostBudget(redis, 1), HostBudget(redis, 1)
    stop = asyncio.Event()

    async def back_to_back() -> None:
        while not stop.is_set():
            async with busy.slot("one.test"):
                await asyncio.sleep(0.005)

    looping = asyncio.create_task(back_to_back())
    try:
        await asyncio.sleep(0.1)  # the busy one holds the only slot, file after file
        began = time.monotonic()
        async with asyncio.timeout(5), waiting.slot("one.test"):
            waited_s = time.monotonic() - began
    finally:
        stop.set()
        await looping
        await busy.close()
        await waiting.close()
    assert waited_s < 2.5  # the reuse limit (1 s) plus one backoff step of the waiter
