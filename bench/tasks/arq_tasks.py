"""arq peer: Worker(max_jobs=slots, poll_delay=0.01), other settings arq's defaults.

Worker side (`python arq_tasks.py worker`): each job does nothing (or sleeps), then INSERTs its
job id and start time through an asyncpg pool of DB_POOL made in on_startup. arq keeps each
job's result in Redis (keep_result 3600 s, its default). arq pins redis-py < 6: its own venv.
Driver side (run as a script by the orchestrator): `enqueue_job` per task, ENQUEUE_IN_FLIGHT at
a time on arq's pool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
import task_peers
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func
from task_workloads import DB_POOL, NOOP, SLEEP, TaskWorkload

INSERT = task_peers.INSERT_SQL.format("$1", "$2")
POLL_DELAY_S = 0.01
ENQUEUE_IN_FLIGHT = 64


async def startup(ctx: dict[str, Any]) -> None:
    ctx["pg"] = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=1, max_size=DB_POOL)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["pg"].close()


async def noop(ctx: dict[str, Any]) -> None:
    await ctx["pg"].execute(INSERT, ctx["job_id"], time.time())


async def sleep(ctx: dict[str, Any], ms: float) -> None:
    started = time.time()
    await asyncio.sleep(ms / 1e3)
    await ctx["pg"].execute(INSERT, ctx["job_id"], started)


def run_worker() -> None:
    Worker(
        functions=[func(noop, name=NOOP), func(sleep, name=SLEEP)],
        redis_settings=RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"]),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=int(os.environ["BENCH_CONCURRENCY"]),
        poll_delay=POLL_DELAY_S,
    ).run()


class ArqPeer:
    name = "arq"
    stop_signal = signal.SIGTERM
    config = (
        f"Worker max_jobs = slots, poll_delay {POLL_DELAY_S}, other defaults (keep_result "
        f"3600 s); asyncpg pool (max {DB_POOL}); enqueue_job, {ENQUEUE_IN_FLIGHT} in flight"
    )

    def __init__(self) -> None:
        self.pool: ArqRedis | None = None

    def worker_argv(self, workload: TaskWorkload) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "worker"]

    async def open(self, run: task_peers.TaskRun) -> None:
        self.pool = await create_pool(RedisSettings.from_dsn(run.redis_url))

    async def enqueue(self, workload: TaskWorkload) -> list[str]:
        pool, gate = self.pool, asyncio.Semaphore(ENQUEUE_IN_FLIGHT)
        assert pool is not None

        async def one() -> str:
            async with gate:
                job = await pool.enqueue_job(workload.task, **workload.args)
            assert job is not None
            return job.job_id

        return list(await asyncio.gather(*(one() for _ in range(workload.count))))

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()

    def versions(self) -> dict[str, str]:
        return {p: version(p) for p in ("arq", "redis", "asyncpg")}


if __name__ == "__main__":
    run_worker() if sys.argv[1:] == ["worker"] else task_peers.main(ArqPeer())
