"""The worker registry on real Redis: register, heartbeat, expire when silent, leave on exit."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from shared import workers
from shared.consumer import ConsumerStats
from shared.redis_client import open_redis
from shared.streams import worker_key
from shared.workers import list_workers, worker_presence

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url) as client:
        yield client


async def _until_listed(
    redis: Redis, count: int, timeout_s: float = 2.0
) -> list[workers.WorkerInfo]:
    deadline = time.monotonic() + timeout_s
    while len(found := await list_workers(redis)) != count:
        if time.monotonic() > deadline:
            pytest.fail(f"expected {count} workers, found {found}")
        await asyncio.sleep(0.02)
    return found


def test_the_defaults_are_a_10_s_heartbeat_and_a_30_s_expiry() -> None:
    assert workers.HEARTBEAT_S == 10.0
    assert workers.EXPIRY_S == 30.0


async def test_a_worker_is_listed_with_its_identity_and_counters(redis: Redis) -> None:
    stats = ConsumerStats(processed=7, failed=2, retried=3, in_flight=1)
    before = time.time()
    async with worker_presence(redis, "downloader", "host-a-1", stats):
        [worker] = await _until_listed(redis, 1)
        ttl_ms = await redis.pttl(worker_key("host-a-1"))

    assert worker.service == "downloader"
    assert worker.consumer == "host-a-1"
    assert worker.host == socket.gethostname()
    assert worker.pid == os.getpid()
    assert (worker.in_flight, worker.processed, worker.failed, worker.retried) == (1, 7, 2, 3)
    assert before - 1 <= worker.started_at.timestamp() <= worker.last_heartbeat.timestamp()
    assert worker.last_heartbeat.timestamp() <= time.time()
    assert 25_000 < ttl_ms <= 30_000


async def test_the_heartbeat_refreshes_counters_and_expiry(redis: Redis) -> None:
    stats = ConsumerStats()
    async with worker_presence(redis, "processor", "host-b-2", stats, heartbeat_s=0.05):
        [first] = await _until_listed(redis, 1)
        stats.processed = 5
        stats.in_flight = 2
        deadline = time.monotonic() + 2
        while (now := (await list_workers(redis))[0]).processed != 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    assert now.in_flight == 2
    assert now.last_heartbeat > first.last_heartbeat
    assert now.started_at == first.started_at


async def test_a_clean_exit_removes_the_worker_at_once(redis: Redis) -> None:
    async with worker_presence(redis, "exporter", "host-c-3", None):
        await _until_listed(redis, 1)
    assert await list_workers(redis) == []
    assert not await redis.exists(worker_key("host-c-3"))


async def test_a_worker_that_stops_heartbeating_expires(redis: Redis) -> None:
    # A frozen or killed worker: it registered once, then nothing refreshed its entry.
    async with worker_presence(redis, "downloader", "host-d-4", None, heartbeat_s=60, expiry_s=0.3):
        await _until_listed(redis, 1)
        await _until_listed(redis, 0, timeout_s=2.0)


async def test_several_workers_are_listed_by_service_then_name(redis: Redis) -> None:
    async with (
        worker_presence(redis, "downloader", "h-2", None),
        worker_presence(redis, "downloader", "h-1", None),
        worker_presence(redis, "gateway", "h-0", None),
    ):
        found = await _until_listed(redis, 3)
    assert [(w.service, w.consumer) for w in found] == [
        ("downloader", "h-1"),
        ("downloader", "h-2"),
        ("gateway", "h-0"),
    ]


async def test_an_unreadable_entry_is_not_a_worker(redis: Redis) -> None:
    await redis.hset(worker_key("broken"), mapping={"service": "downloader", "pid": "x"})
    async with worker_presence(redis, "downloader", "fine", None):
        [worker] = await _until_listed(redis, 1)
    assert worker.consumer == "fine"


async def test_redis_being_down_does_not_stop_the_worker() -> None:
    # A port nothing listens on: every heartbeat fails, and the block still runs and exits.
    dead = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    try:
        async with worker_presence(dead, "downloader", "offline", None, heartbeat_s=0.05):
            await asyncio.sleep(0.2)
    finally:
        await dead.aclose()
