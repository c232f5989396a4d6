"""taskiq peer: RedisStreamBroker (consumer group + XACK, like Downlink), 1 worker, 16 tasks.

Worker side (`taskiq worker peer_taskiq:broker`): each task GETs one file through one aiohttp
session per worker process, streams it to BENCH_OUT/<task id> while hashing it (SHA-256), then
INSERTs (task id, sha256, size) through an asyncpg pool of 16, both made on worker startup.
Driver side (run as a script by the orchestrator): `await fetch.kiq(url)` per file.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path

import aiohttp
import asyncpg
import peer_runner
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from taskiq import Context, TaskiqDepends, TaskiqEvents, TaskiqState
from taskiq_redis import RedisStreamBroker

INSERT = f"INSERT INTO {peer_runner.TABLE} VALUES ($1, $2, $3) ON CONFLICT (task_id) DO NOTHING"
STREAM, GROUP = "bench:taskiq", "workers"

broker = RedisStreamBroker(
    os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"),
    queue_name=STREAM,
    consumer_group_name=GROUP,
)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def startup(state: TaskiqState) -> None:
    state.http = aiohttp.ClientSession()
    state.pg = await asyncpg.create_pool(
        os.environ["BENCH_DSN"], min_size=1, max_size=int(os.environ["BENCH_CONCURRENCY"])
    )


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def shutdown(state: TaskiqState) -> None:
    await state.http.close()
    await state.pg.close()


@broker.task(task_name="bench.fetch")
async def fetch(url: str, context: Context = TaskiqDepends()) -> None:  # noqa: B008 - taskiq's idiom
    task_id, digest, size = context.message.task_id, hashlib.sha256(), 0
    async with context.state.http.get(url) as response:
        response.raise_for_status()
        # Blocking writes on purpose: the same plain code a user of this peer writes.
        with open(os.path.join(os.environ["BENCH_OUT"], task_id), "wb") as out:  # noqa: ASYNC230
            async for chunk in response.content.iter_chunked(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    await context.state.pg.execute(INSERT, task_id, digest.hexdigest(), size)


class TaskiqPeer:
    name = "taskiq"
    stop_signal = signal.SIGINT  # taskiq's graceful stop
    config = (
        "RedisStreamBroker defaults; taskiq worker --workers 1 --max-async-tasks 16; "
        "aiohttp.ClientSession + asyncpg pool (max 16) made on worker startup"
    )

    def __init__(self) -> None:
        self.broker: RedisStreamBroker | None = None

    def worker_argv(self) -> list[str]:
        taskiq = str(Path(sys.executable).with_name("taskiq"))
        return [
            taskiq,
            "worker",
            "peer_taskiq:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(peer_runner.CONCURRENCY),
            "--log-level",
            "WARNING",
        ]

    async def open(self, run: peer_runner.Run) -> None:
        # Made before the first message, so nothing sent before the worker is up is skipped.
        client = aioredis.from_url(run.redis_url)
        try:
            await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        finally:
            await client.aclose()
        self.broker = RedisStreamBroker(run.redis_url, queue_name=STREAM, consumer_group_name=GROUP)
        await self.broker.startup()

    async def submit(self, url: str) -> str:
        assert self.broker is not None
        task = await fetch.kicker().with_broker(self.broker).kiq(url)
        return task.task_id

    async def close(self) -> None:
        if self.broker is not None:
            await self.broker.shutdown()

    def versions(self) -> dict[str, str]:
        return {p: version(p) for p in ("taskiq", "taskiq-redis", "redis", "aiohttp", "asyncpg")}


if __name__ == "__main__":
    peer_runner.main(TaskiqPeer())
