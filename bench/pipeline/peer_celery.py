"""Celery peer: redis broker, acks_late, no result backend, threads pool of 16.

Worker side (imported by `celery -A peer_celery worker`): each task GETs one file through one
httpx.Client per process, streams it to BENCH_OUT/<task id> while hashing it (SHA-256), then
INSERTs (task id, sha256, size) with one autocommit psycopg connection per thread.
Driver side (run as a script by the orchestrator): `fetch.delay(url)` per file, see peer_runner.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import httpx
import peer_runner
import psycopg
from celery import Celery

INSERT = f"INSERT INTO {peer_runner.TABLE} VALUES (%s, %s, %s) ON CONFLICT (task_id) DO NOTHING"

app = Celery("peer_celery", broker=os.environ.get("BENCH_REDIS_URL"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_client_lock, _thread = threading.Lock(), threading.local()
_clients: list[httpx.Client] = []  # one per process, shared by its threads


def _http() -> httpx.Client:
    with _client_lock:
        if not _clients:
            n = int(os.environ["BENCH_CONCURRENCY"])
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            _clients.append(httpx.Client(limits=limits, trust_env=False))
    return _clients[0]


def _db() -> psycopg.Connection:
    connection = getattr(_thread, "connection", None)
    if connection is None or connection.closed:
        connection = _thread.connection = psycopg.connect(os.environ["BENCH_DSN"], autocommit=True)
    return connection


@app.task(bind=True, name="bench.fetch")
def fetch(self, url: str) -> None:  # type: ignore[no-untyped-def]
    task_id, digest, size = self.request.id, hashlib.sha256(), 0
    with _http().stream("GET", url) as response:
        response.raise_for_status()
        with open(os.path.join(os.environ["BENCH_OUT"], task_id), "wb") as out:
            for chunk in response.iter_bytes(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
    _db().execute(INSERT, (task_id, digest.hexdigest(), size))


class CeleryPeer:
    name = "celery"
    stop_signal = signal.SIGTERM  # warm shutdown
    config = (
        "redis broker, acks_late, ignore_result, default prefetch; --pool threads -c 16 "
        "--without-gossip/mingle/heartbeat; httpx.Client per process, psycopg per thread"
    )

    def worker_argv(self) -> list[str]:
        celery = str(Path(sys.executable).with_name("celery"))
        return [
            celery,
            "-A",
            "peer_celery",
            "worker",
            "--pool",
            "threads",
            "-c",
            str(peer_runner.CONCURRENCY),
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]

    async def open(self, run: peer_runner.Run) -> None:
        app.conf.broker_url = run.redis_url

    async def submit(self, url: str) -> str:
        return str(fetch.delay(url).id)  # a synchronous producer, as Celery users have

    async def close(self) -> None:
        app.close()

    def versions(self) -> dict[str, str]:
        return {p: version(p) for p in ("celery", "kombu", "redis", "httpx", "psycopg")}


if __name__ == "__main__":
    peer_runner.main(CeleryPeer())
