"""arq peer: Worker(max_jobs=16, poll_delay=0.01), other settings arq's defaults.

Worker side (`python peer_arq.py worker`): each job GETs one file through one aiohttp session per
worker, streams it to BENCH_OUT/<job id> while hashing it (SHA-256), then INSERTs (job id, sha256,
size) through an asyncpg pool of 16. arq pins redis-py < 6, hence its own venv.
Driver side (run as a script by the orchestrator): `enqueue_job("fetch", url)` per file.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import peer_runner
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker

INSERT = f"INSERT INTO {peer_runner.TABLE} VALUES ($1, $2, $3) ON CONFLICT (task_id) DO NOTHING"
POLL_DELAY_S = 0.01


async def startup(ctx: dict[str, Any]) -> None:
    ctx["http"] = aiohttp.ClientSession()
    ctx["pg"] = await asyncpg.create_pool(
        os.environ["BENCH_DSN"], min_size=1, max_size=int(os.environ["BENCH_CONCURRENCY"])
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].close()
    await ctx["pg"].close()


async def fetch(ctx: dict[str, Any], url: str) -> None:
    job_id, digest, size = ctx["job_id"], hashlib.sha256(), 0
    async with ctx["http"].get(url) as response:
        response.raise_for_status()
        # Blocking writes on purpose: the same plain code a user of this peer writes.
        with open(os.path.join(os.environ["BENCH_OUT"], job_id), "wb") as out:  # noqa: ASYNC230
            async for chunk in response.content.iter_chunked(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    await ctx["pg"].execute(INSERT, job_id, digest.hexdigest(), size)


def run_worker() -> None:
    Worker(
        functions=[fetch],
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
        f"Worker max_jobs 16, poll_delay {POLL_DELAY_S}, other defaults (keep_result 3600 s); "
        "aiohttp.ClientSession + asyncpg pool (max 16) made in on_startup"
    )

    def __init__(self) -> None:
        self.pool: ArqRedis | None = None

    def worker_argv(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "worker"]

    async def open(self, run: peer_runner.Run) -> None:
        self.pool = await create_pool(RedisSettings.from_dsn(run.redis_url))

    async def submit(self, url: str) -> str:
        assert self.pool is not None
        job = await self.pool.enqueue_job("fetch", url)
        assert job is not None
        return job.job_id

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()

    def versions(self) -> dict[str, str]:
        return {p: version(p) for p in ("arq", "redis", "aiohttp", "asyncpg")}


if __name__ == "__main__":
    run_worker() if sys.argv[1:] == ["worker"] else peer_runner.main(ArqPeer())
