"""Fleet-wide limits of tasks on real Redis: `ctx.rate_limit` and `ctx.concurrency`, between
instances in one process and across real `downlink worker` processes, SIGKILL included."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

from services.tasks.limits import (
    CONCURRENCY_KEY_PREFIX,
    CONCURRENCY_LEASE_S,
    RATE_KEY_PREFIX,
    TaskLimits,
)
from shared.redis_client import open_redis
from tests.tasks.conftest import STACK_ENV, enqueue, start_worker, wait_task
from tests.tasks.limited_tasks import CALLS_PER_WINDOW

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from redis.asyncio import Redis

    from tests.integration.conftest import Pipeline, PipelineFactory

LIMITED_TASKS = ("--tasks", "tests.tasks.limited_tasks")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url) as client:
        yield client


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


class StrictServer(ThreadingHTTPServer):
    """An API that allows `CALLS_PER_WINDOW` requests in any second and answers 429 above."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StrictHandler)
        self.arrivals: list[float] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/esearch"

    def admit(self) -> int:
        with self.lock:
            now = time.monotonic()
            self.arrivals.append(now)
            recent = sum(1 for at in self.arrivals if at > now - 1.0)
            status = 429 if recent > CALLS_PER_WINDOW else 200
            self.statuses.append(status)
            return status


class _StrictHandler(BaseHTTPRequestHandler):
    server: StrictServer

    def do_GET(self) -> None:
        self.send_response(self.server.admit())
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test reads the records, not a log


@pytest.fixture
def strict_server() -> Iterator[StrictServer]:
    server = StrictServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + window_s) for i, start in enumerate(times))


async def _script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


# -- the Redis scripts, two instances standing for two workers -------------------------------


async def test_a_rate_limit_holds_across_instances_and_waiting_does_not_poll(
    redis: Redis,
) -> None:
    granted: list[float] = []
    before = await _script_calls(redis)
    async with TaskLimits(redis) as first, TaskLimits(redis) as second:

        async def call(limits: TaskLimits) -> None:
            await limits.rate_limit("api", 3, per_s=0.5)
            granted.append(time.monotonic())

        began = time.monotonic()
        await asyncio.gather(*(call(first if i % 2 else second) for i in range(9)))
    # Three at once, then three when the first leave the window, and three more.
    assert _most_in_any_window(granted, 0.5 - 0.02) == 3
    assert 1.0 - 0.02 < max(granted) - began < 1.5
    # Each instance asks once per grant and once per wait the script measured: no spinning.
    assert await _script_calls(redis) - before <= 9 + 2 * 4
    ttl_ms = await redis.pttl(RATE_KEY_PREFIX + "api")
    assert 0 < ttl_ms <= 1500


async def test_a_cancelled_wait_ends_at_once_and_takes_no_call(redis: Redis) -> None:
    async with TaskLimits(redis) as limits:
        await limits.rate_limit("slow-api", 1, per_s=30)
        waiting = asyncio.create_task(limits.rate_limit("slow-api", 1, per_s=30))
        await asyncio.sleep(0.1)
        cancelled_at = time.monotonic()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert time.monotonic() - cancelled_at < 0.1
    assert await redis.zcard(RATE_KEY_PREFIX + "slow-api") == 1


async def test_concurrency_holds_across_instances_and_leaves_nothing_behind(
    redis: Redis,
) -> None:
    inside = peak = 0

    async def hold(limits: TaskLimits) -> None:
        nonlocal inside, peak
        async with limits.concurrency("gpu", 2):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.03)
            inside -= 1

    async def never_gets_in(limits: TaskLimits) -> None:
        async with limits.concurrency("gpu", 2):
            pytest.fail("got a third slot of two")

    async with TaskLimits(redis) as first, TaskLimits(redis) as second:
        await asyncio.gather(*(hold(first if i % 2 else second) for i in range(10)))
        async with second.concurrency("gpu", 2), second.concurrency("gpu", 2):
            waiting = asyncio.create_task(never_gets_in(first))
            await asyncio.sleep(0.2)  # the waiter asks, backs off, asks again
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
    assert peak == 2
    assert await redis.zcard(CONCURRENCY_KEY_PREFIX + "gpu") == 0


@pytest.mark.parametrize(
    ("key", "n", "per_s"), [("", 1, 1.0), ("api", 0, 1.0), ("api", 1, 0.0), ("api", 1, -1.0)]
)
async def test_a_bad_limit_is_refused(redis: Redis, key: str, n: int, per_s: float) -> None:
    async with TaskLimits(redis) as limits:
        with pytest.raises(ValueError):  # noqa: PT011 - each names its argument
            await limits.rate_limit(key, n, per_s)


# -- real workers -------------------------------------------------------------------------


@pytest.mark.integration
def test_a_rate_limit_holds_across_worker_processes(
    stack: Pipeline, strict_server: StrictServer
) -> None:
    for _ in range(2):
        start_worker(stack, *LIMITED_TASKS, "--max-jobs", "8")
    alice = stack.client("alice")
    task_ids = [enqueue(alice, "limited_get", args={"url": strict_server.url}) for _ in range(12)]
    done = [wait_task(alice, task_id, timeout=60) for task_id in task_ids]
    assert [task["result"] for task in done] == [200] * 12
    assert len({task["worker"] for task in done}) == 2
    assert strict_server.statuses.count(429) == 0
    assert _most_in_any_window(strict_server.arrivals, 1.0) <= CALLS_PER_WINDOW


@pytest.mark.integration
def test_concurrency_holds_across_worker_processes(stack: Pipeline, tmp_path: Path) -> None:
    for _ in range(2):
        start_worker(stack, *LIMITED_TASKS, "--max-jobs", "4")
    alice = stack.client("alice")
    log = tmp_path / "slots.log"
    args = {"log": str(log), "hold_s": 0.3, "n": 2}
    task_ids = [enqueue(alice, "hold_slot", args=args) for _ in range(8)]
    done = [wait_task(alice, task_id, timeout=60) for task_id in task_ids]
    assert {task["status"] for task in done} == {"completed"}
    assert len({task["worker"] for task in done}) == 2
    inside = peak = 0
    for line in sorted(log.read_text().splitlines(), key=lambda line: float(line.split()[1])):
        inside += 1 if line.startswith("in ") else -1
        peak = max(peak, inside)
    assert peak == 2


@pytest.mark.integration
def test_a_sigkilled_holders_slot_is_freed_after_its_lease(
    stack: Pipeline, tmp_path: Path, redis_url: str
) -> None:
    worker = start_worker(stack, *LIMITED_TASKS)
    alice = stack.client("alice")
    log = tmp_path / "slots.log"
    enqueue(alice, "hold_slot", args={"log": str(log), "hold_s": 600, "n": 1})
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text()):
        assert time.monotonic() < deadline, "the task never took its slot"
        time.sleep(0.05)

    async def take_the_slot() -> float:
        async with open_redis(redis_url) as redis, TaskLimits(redis) as limits:
            assert await redis.zcard(CONCURRENCY_KEY_PREFIX + "gpu") == 1
            worker.kill()
            killed_at = time.monotonic()
            async with asyncio.timeout(CONCURRENCY_LEASE_S + 5), limits.concurrency("gpu", 1):
                return time.monotonic() - killed_at

    freed_after_s = asyncio.run(take_the_slot())
    # Held until the lease ran out (not given back: the holder died), then freed.
    assert 1.0 < freed_after_s < CONCURRENCY_LEASE_S + 1.0
