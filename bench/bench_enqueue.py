"""Enqueue throughput of user-defined tasks: single POST /api/v1/tasks against the batch route.

One gateway process (uvicorn, its relay publishing to Redis as it goes) on local Redis and
PostgreSQL; the task types are registered as a live worker registers them, and no worker runs,
so only the enqueue path is timed: validation, the task and outbox rows (the 202s), and apart
from that the relay's publish of the commands onto their lanes.
Prints one JSON object. Uses DOWNLINK_BENCH_REDIS_URL / DOWNLINK_BENCH_DATABASE_URL (defaults:
the local servers) and sends traffic to 127.0.0.1 only.

    .venv/bin/python bench/bench_enqueue.py [--single 2000] [--batches 20] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lone_gateway import cpu_seconds, lone_gateway

from services.tasks.registry import load_tasks, registered
from shared.streams import task_types_key


async def _timed(
    client: httpx.AsyncClient, bodies: list[tuple[str, object]], workers: int
) -> float:
    """Seconds to POST every (path, body) with `workers` requests in flight."""
    queue = list(reversed(bodies))

    async def worker() -> None:
        while queue:
            path, body = queue.pop()
            response = await client.post(path, json=body)
            if response.status_code != 202:
                raise SystemExit(f"{path}: {response.status_code} {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - started


async def _drained(database_url: str) -> None:
    """Return once the relay has published every outbox row."""
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            if not await connection.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
                return
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


async def _measure(
    base: str, token: str, database_url: str, gateway_pid: int, args: argparse.Namespace
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base, headers=headers, trust_env=False, timeout=60
    ) as client:
        single = [("/api/v1/tasks", {"task": "add", "args": {"a": n}}) for n in range(args.single)]
        batch = [
            (
                "/api/v1/tasks/batch",
                {"tasks": [{"task": "add", "args": {"a": n}}] * args.batch_size},
            )
            for n in range(args.batches)
        ]
        await _timed(client, single[:50] + batch[:1], 4)  # warm-up: pools, caches, JIT-free paths
        await _drained(database_url)
        cpu_before = cpu_seconds(gateway_pid)
        single_s = await _timed(client, single, args.concurrency)
        await _drained(database_url)
        cpu_single = cpu_seconds(gateway_pid) - cpu_before
        started, cpu_before = time.perf_counter(), cpu_seconds(gateway_pid)
        batch_s = await _timed(client, batch, args.batch_concurrency)
        await _drained(database_url)
        published_s = time.perf_counter() - started
        cpu_batch = cpu_seconds(gateway_pid) - cpu_before
    batch_tasks = args.batches * args.batch_size
    return {
        "benchmark": "enqueue",
        "single": {
            "tasks": args.single,
            "concurrency": args.concurrency,
            "seconds": round(single_s, 3),
            "tasks_per_s": round(args.single / single_s, 1),
            # Gateway CPU per task, relay included: what a busy machine cannot distort.
            "gateway_cpu_ms_per_task": round(1000 * cpu_single / args.single, 3),
        },
        "batch": {
            "tasks": batch_tasks,
            "batch_size": args.batch_size,
            "concurrency": args.batch_concurrency,
            "seconds": round(batch_s, 3),
            "tasks_per_s": round(batch_tasks / batch_s, 1),
            # Until the relay (same process) has put every command on its lane.
            "published_s": round(published_s, 3),
            "published_per_s": round(batch_tasks / published_s, 1),
            "gateway_cpu_ms_per_task": round(1000 * cpu_batch / batch_tasks, 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=2000, help="single POSTs")
    parser.add_argument("--concurrency", type=int, default=16, help="single POSTs in flight")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-concurrency", type=int, default=2, help="batches in flight")
    args = parser.parse_args()
    with lone_gateway() as gateway:
        # The task types, as a live worker registers them: no worker runs.
        tasks = load_tasks(["tests.tasks.sample_tasks"], queue="default")
        redis.Redis.from_url(gateway.redis_url).hset(
            task_types_key("bench-worker"),
            mapping=registered(tasks, "bench-worker"),  # type: ignore[arg-type]
        )
        report = asyncio.run(
            _measure(gateway.url, gateway.token, gateway.database_url, gateway.pid, args)
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
