"""Celery peer: redis broker, acks_late, no result backend, threads pool of `slots`.

Worker side (imported by `celery -A celery_tasks worker`): each task does nothing (or sleeps),
then INSERTs its task id and start time on one of DB_POOL autocommit psycopg connections the
threads share. Driver side (run as a script by the orchestrator): `apply_async` per task, one
after the other, as Celery's synchronous producers do.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
from importlib.metadata import version
from pathlib import Path

import psycopg
import task_peers
from celery import Celery
from task_workloads import DB_POOL, NOOP, SLEEP, TaskWorkload

INSERT = task_peers.INSERT_SQL.format("%s", "%s")

app = Celery("celery_tasks", broker=os.environ.get("BENCH_REDIS_URL"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
# Connections shared by the threads; None is a free slot not yet connected.
_connections: queue.LifoQueue[psycopg.Connection | None] = queue.LifoQueue()
for _ in range(DB_POOL):
    _connections.put(None)


def _record(task_id: str, started: float) -> None:
    connection = _connections.get()
    try:
        if connection is None or connection.closed:
            connection = psycopg.connect(os.environ["BENCH_DSN"], autocommit=True)
        connection.execute(INSERT, (task_id, started))
    finally:
        _connections.put(connection)


@app.task(bind=True, name=NOOP)
def noop(self) -> None:  # type: ignore[no-untyped-def]
    _record(self.request.id, time.time())


@app.task(bind=True, name=SLEEP)
def sleep(self, ms: float) -> None:  # type: ignore[no-untyped-def]
    started = time.time()
    time.sleep(ms / 1e3)
    _record(self.request.id, started)


class CeleryPeer:
    name = "celery"
    stop_signal = signal.SIGTERM  # warm shutdown
    config = (
        "redis broker, acks_late, ignore_result, default prefetch; --pool threads -c slots "
        f"--without-gossip/mingle/heartbeat; {DB_POOL} psycopg connections shared by the threads; "
        "apply_async one after the other"
    )

    def worker_argv(self, workload: TaskWorkload) -> list[str]:
        celery = str(Path(sys.executable).with_name("celery"))
        return [
            celery, "-A", "celery_tasks", "worker", "--pool", "threads",
            "-c", str(workload.slots), "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip

    async def open(self, run: task_peers.TaskRun) -> None:
        app.conf.broker_url = run.redis_url

    async def enqueue(self, workload: TaskWorkload) -> list[str]:
        task = sleep if workload.sleep_ms else noop
        return [str(task.apply_async(kwargs=workload.args).id) for _ in range(workload.count)]

    async def close(self) -> None:
        app.close()

    def versions(self) -> dict[str, str]:
        return {p: version(p) for p in ("celery", "kombu", "redis", "psycopg")}


if __name__ == "__main__":
    task_peers.main(CeleryPeer())
