"""Downlink's task worker end to end: the gateway and one `downlink worker` started by the bench.

Per run: the stack of downlink_runner with the gateway alone (its relay and tracker record every
task in PostgreSQL) plus `downlink worker --tasks sample_tasks --queue bench --max-jobs SLOTS`,
a warm-up of no-op tasks, then per rep N enqueues over HTTP (`POST /api/v1/tasks/batch`, 1,000
per request, when the gateway has it; else single `POST /api/v1/tasks`, SINGLE_IN_FLIGHT at a
time) and a completion poll (`tasks.status = 'completed'` counted every POLL_S).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from downlink_runner import Stack
from meter import Families, Meter
from peer_runner import wait_rows
from processes import stop
from task_peers import TaskRun
from task_report import Rep, task_result
from task_workloads import NOOP, QUEUE, SLEEP, TaskWorkload

HERE = Path(__file__).resolve().parent
BATCH_SIZE, BATCH_IN_FLIGHT, SINGLE_IN_FLIGHT = 1_000, 4, 32
COMPLETED = "SELECT count(*) FROM tasks WHERE status = 'completed'"
OUTCOMES = "SELECT status, count(*) FROM tasks WHERE id = ANY($1::uuid[]) GROUP BY status"
BUSY = (
    "SELECT extract(epoch FROM max(updated_at) - min(started_at))::float FROM tasks"
    " WHERE id = ANY($1::uuid[])"
)


class TaskApi:
    """The routes the bench uses: task types, and enqueues (batched when the gateway can)."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            trust_env=False,
            limits=httpx.Limits(max_connections=SINGLE_IN_FLIGHT),
        )
        self.batch = False

    async def ready(self, timeout_s: float = 60) -> None:
        """Until a live worker registered the bench's tasks; notes whether batches exist."""
        schema = await self.client.get("/schema/openapi.json")
        self.batch = "/api/v1/tasks/batch" in schema.json().get("paths", {})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            types = (await self.client.get("/api/v1/task-types")).json()["task_types"]
            if {NOOP, SLEEP} <= {t["name"] for t in types}:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"no worker registered {NOOP} and {SLEEP} within {timeout_s:.0f} s")

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.client.post(path, json=body)
        if response.status_code != 202:
            raise RuntimeError(
                f"POST {path} answered {response.status_code}: {response.text[:300]}"
            )
        answer: dict[str, Any] = response.json()
        return answer

    async def enqueue(self, workload: TaskWorkload) -> list[str]:
        item = {"task": workload.task, "args": workload.args}
        if self.batch:
            sizes = [
                min(BATCH_SIZE, workload.count - s) for s in range(0, workload.count, BATCH_SIZE)
            ]
            gate = asyncio.Semaphore(BATCH_IN_FLIGHT)

            async def batch(size: int) -> list[str]:
                async with gate:
                    answer = await self._post("/api/v1/tasks/batch", {"tasks": [item] * size})
                return [t["task_id"] for t in answer["tasks"]]

            return [i for ids in await asyncio.gather(*map(batch, sizes)) for i in ids]
        gate = asyncio.Semaphore(SINGLE_IN_FLIGHT)

        async def single() -> str:
            async with gate:
                return str((await self._post("/api/v1/tasks", item))["task_id"])

        return list(await asyncio.gather(*(single() for _ in range(workload.count))))


async def _rep(
    api: TaskApi, run: TaskRun, pg: asyncpg.Connection, worker: subprocess.Popen[bytes],
    meter: Meter, workload: TaskWorkload,
) -> Rep:  # fmt: skip
    done_before = await pg.fetchval(COMPLETED)
    meter.start()
    started = time.perf_counter()
    ids = await api.enqueue(workload)
    enqueued = time.perf_counter()
    want = done_before + len(ids)
    await wait_rows(pg, want, worker, run, run.timeout_s(), COMPLETED)
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    uuids = [uuid.UUID(i) for i in ids]
    outcomes = dict(await pg.fetch(OUTCOMES, uuids))
    if outcomes != {"completed": workload.count}:
        raise AssertionError(f"{workload.count} tasks enqueued, ended {outcomes}")
    return Rep(seconds, enqueued - started, await pg.fetchval(BUSY, uuids), cpu)


async def _measure(
    run: TaskRun, stack: Stack, token: str, worker: subprocess.Popen[bytes]
) -> tuple[list[Rep], bool]:
    api = TaskApi(stack.base_url, token)
    pg = await asyncpg.connect(run.database_url)
    try:
        await api.ready()
        poll_pid = await pg.fetchval("SELECT pg_backend_pid()")
        await _rep(api, run, pg, worker, Meter(Families()), run.warm())
        assert stack.process is not None
        families = Families(
            trees={"gateway": stack.process.pid, "worker": worker.pid, "redis": run.redis_pid},
            database=run.database,
            poll_backend_pid=poll_pid,
        )
        meter = Meter(families)
        reps = [await _rep(api, run, pg, worker, meter, run.workload) for _ in range(run.reps)]
    finally:
        await pg.close()
        await api.client.aclose()
    return reps, api.batch


def measure(run: TaskRun) -> dict[str, Any]:
    src, slots = run.extra["downlink_src"], run.workload.slots
    stack = Stack(run, command=("gateway",))
    worker = None
    try:
        token = stack.start()
        worker = stack.launch(
            ("worker", "--tasks", "sample_tasks", "--queue", QUEUE, "--max-jobs", str(slots)),
            run.log_path.with_suffix(".worker.log"),
            # The worker imports the bench's tasks module from here, Downlink from its checkout.
            {"PYTHONPATH": os.pathsep.join((src, str(HERE)))},
        )
        reps, batch = asyncio.run(_measure(run, stack, token, worker))
    finally:
        stop(worker, signal.SIGTERM, grace_s=45)
        stack.stop()
    how = (
        f"POST /api/v1/tasks/batch of {BATCH_SIZE}, {BATCH_IN_FLIGHT} in flight"
        if batch
        else f"single POST /api/v1/tasks, {SINGLE_IN_FLIGHT} in flight (no batch endpoint)"
    )
    details = {
        "enqueue": how,
        "config": f"downlink gateway (relay, tracker) + downlink worker --max-jobs {slots}, "
        "DOWNLINK_LOG_LEVEL=WARNING; completion = tasks.status 'completed' counted every 0.05 s",
        "downlink_src": src,
    }
    return task_result("downlink", run.workload, reps, details)


if __name__ == "__main__":
    print(json.dumps(measure(TaskRun.from_argv())))
