"""The measuring loop the task peers (arq, Celery) share, run inside the peer's own venv.

Per run: a fresh `bench_tasks` table, the peer's worker started as a subprocess, a warm-up of
no-op tasks, then per rep N enqueues from this driver and a completion poll (`SELECT count(*)`
every POLL_S) until every task's row is in; then the rows are checked against the task ids.
Each peer module supplies a `TaskPeer`: how to start its worker and how to enqueue N tasks.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from meter import Families, Meter
from peer_runner import World, wait_rows, worker_env
from processes import stop
from task_report import Rep, task_result
from task_workloads import TaskWorkload

HERE = Path(__file__).resolve().parent
TABLE = "bench_tasks"
# What a peer's task records when it ends: its id, and when it started (for `busy_s`).
CREATE = (
    f"CREATE TABLE {TABLE} (task_id text PRIMARY KEY, started_at timestamptz NOT NULL,"
    " done_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
INSERT_SQL = f"INSERT INTO {TABLE} (task_id, started_at) VALUES ({{}}, to_timestamp({{}}))"
COUNT = f"SELECT count(*) FROM {TABLE}"
BUSY = f"SELECT extract(epoch FROM max(done_at) - min(started_at))::float FROM {TABLE}"


@dataclass(kw_only=True)
class TaskRun(World):
    """A task run: the workload's tasks."""

    workload: TaskWorkload

    @classmethod
    def decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {**super().decode(data), "workload": TaskWorkload.from_json(data["workload"])}

    def timeout_s(self) -> float:
        # Bounded, yet roomy for the slowest system: 20 tasks/s.
        return 120 + self.workload.count / 20

    def warm(self) -> TaskWorkload:
        return TaskWorkload("warmup", self.warmup, 0, self.workload.slots)


class TaskPeer(Protocol):
    name: str
    config: str
    stop_signal: int

    def worker_argv(self, workload: TaskWorkload) -> list[str]: ...
    async def open(self, run: TaskRun) -> None: ...
    async def enqueue(self, workload: TaskWorkload) -> list[str]: ...
    async def close(self) -> None: ...
    def versions(self) -> dict[str, str]: ...


async def _rep(
    peer: TaskPeer,
    run: TaskRun,
    pg: asyncpg.Connection,
    worker: subprocess.Popen[bytes],
    meter: Meter,
) -> Rep:
    await pg.execute(f"TRUNCATE {TABLE}")
    meter.start()
    started = time.perf_counter()
    ids = await peer.enqueue(run.workload)
    enqueued = time.perf_counter()
    await wait_rows(pg, len(ids), worker, run, run.timeout_s(), COUNT)
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    rows = {r["task_id"] for r in await pg.fetch(f"SELECT task_id FROM {TABLE}")}
    if rows != set(ids) or len(ids) != run.workload.count:
        raise AssertionError(f"{len(rows)} rows for {len(ids)} tasks, or other ids")
    return Rep(seconds, enqueued - started, await pg.fetchval(BUSY), cpu)


async def measure(peer: TaskPeer, run: TaskRun) -> dict[str, Any]:
    """Warm up, run the reps, check them; return the run's JSON object."""
    pg = await asyncpg.connect(run.database_url)
    worker = None
    try:
        await pg.execute(CREATE)
        poll_pid = await pg.fetchval("SELECT pg_backend_pid()")
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**worker_env(run), "BENCH_CONCURRENCY": str(run.workload.slots)}
        with run.log_path.open("wb") as log:
            # Once, before any clock starts: a blocking spawn costs the measure nothing.
            worker = subprocess.Popen(  # noqa: ASYNC220
                peer.worker_argv(run.workload),
                cwd=HERE,
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        await peer.open(run)
        warm = await peer.enqueue(run.warm())
        await wait_rows(pg, len(warm), worker, run, run.timeout_s(), COUNT)
        families = Families(
            trees={"worker": worker.pid, "redis": run.redis_pid},
            database=run.database,
            poll_backend_pid=poll_pid,
        )
        meter = Meter(families)
        reps = [await _rep(peer, run, pg, worker, meter) for _ in range(run.reps)]
    finally:
        await peer.close()
        stop(worker, peer.stop_signal)
        await pg.close()
    details = {"config": peer.config, "versions": peer.versions()}
    return task_result(peer.name, run.workload, reps, details)


def main(peer: TaskPeer) -> None:
    """Entry point of a peer module run as a script: print the run's JSON object on stdout."""
    print(json.dumps(asyncio.run(measure(peer, TaskRun.from_argv()))))
