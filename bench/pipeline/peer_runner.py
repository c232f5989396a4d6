"""The measuring loop every peer shares, run inside the peer's own venv.

Per run: a fresh results table, the peer's worker started as a subprocess, a warm-up, then per
rep N submits from this driver and a completion poll (`SELECT count(*)` every POLL_S) until every
row is in; then every row's SHA-256 and size and every file on disk are checked. Each peer module
supplies a `Peer`: how to start its worker and how to submit one URL.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

import asyncpg
from meter import Families, Meter, per_file_us
from processes import stop
from report import run_result, spread
from workloads import WARMUP, TestFile, Workload, make_files, warm_page_cache

CONCURRENCY = 16
POLL_S = 0.05
TABLE = "bench_results"
CREATE = (
    f"CREATE TABLE {TABLE} (task_id text PRIMARY KEY, sha256 text NOT NULL, size bigint NOT NULL)"
)
HERE = Path(__file__).resolve().parent


@dataclass(kw_only=True)
class World:
    """What the orchestrator hands every runner (as JSON on argv[1]): its own Redis, database,
    folders and reps; see isolation.py."""

    redis_url: str
    redis_pid: int
    database_url: str
    database: str
    out_dir: Path
    log_path: Path
    reps: int
    warmup: int
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_argv(cls) -> Self:
        return cls(**cls.decode(json.loads(sys.argv[1])))

    @classmethod
    def decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The JSON's values as the fields' types."""
        return {**data, "out_dir": Path(data["out_dir"]), "log_path": Path(data["log_path"])}


@dataclass(kw_only=True)
class Run(World):
    """A download run: the workload's files, and the file server they are served from."""

    workload: Workload
    www: Path
    base_url: str
    nginx_pid: int

    @classmethod
    def decode(cls, data: dict[str, Any]) -> dict[str, Any]:
        decoded = super().decode(data)
        decoded["workload"] = Workload.from_json(data["workload"])
        decoded["www"] = Path(data["www"])
        return decoded

    def timeout_s(self) -> float:
        # Bounded, yet roomy for the slowest system: 10 files/s, or 20 MiB/s.
        return 120 + self.workload.count / 10 + self.workload.mib / 20


class Peer(Protocol):
    name: str
    config: str
    stop_signal: int

    def worker_argv(self) -> list[str]: ...
    async def open(self, run: Run) -> None: ...
    async def submit(self, url: str) -> str: ...
    async def close(self) -> None: ...
    def versions(self) -> dict[str, str]: ...


def worker_env(run: World) -> dict[str, str]:
    """What a worker process reads (see each peer module's worker side)."""
    return {
        **os.environ,
        "BENCH_OUT": str(run.out_dir),
        "BENCH_DSN": run.database_url,
        "BENCH_REDIS_URL": run.redis_url,
        "BENCH_CONCURRENCY": str(CONCURRENCY),
    }


async def wait_rows(
    pg: asyncpg.Connection,
    want: int,
    worker: subprocess.Popen[bytes],
    run: World,
    timeout_s: float,
    query: str = f"SELECT count(*) FROM {TABLE}",
) -> None:
    """Poll `query` (a count) every POLL_S until it reaches `want`; fail if the worker dies."""
    deadline = time.monotonic() + timeout_s
    while (have := await pg.fetchval(query)) < want:
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; see {run.log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{have} of {want} rows after {timeout_s:.0f} s; see {run.log_path}")
        await asyncio.sleep(POLL_S)


async def _check(pg: asyncpg.Connection, ids: list[str], files: list[TestFile], out: Path) -> None:
    rows = {
        r["task_id"]: (r["sha256"], r["size"]) for r in await pg.fetch(f"SELECT * FROM {TABLE}")
    }
    wrong = [
        tid for tid, f in zip(ids, files, strict=True) if rows.get(tid) != (f.sha256, f.size_bytes)
    ]
    if len(rows) != len(ids) or wrong:
        raise AssertionError(
            f"{len(rows)} rows for {len(ids)} tasks, {len(wrong)} wrong or missing"
        )
    sizes = {entry.name: entry.stat().st_size for entry in os.scandir(out)}
    if len(sizes) != len(ids) or any(
        sizes.get(tid) != f.size_bytes for tid, f in zip(ids, files, strict=True)
    ):
        raise AssertionError(f"{len(sizes)} files on disk for {len(ids)} tasks, or a wrong size")


def _fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


async def _reps(
    peer: Peer, run: Run, pg: asyncpg.Connection, worker: subprocess.Popen[bytes], meter: Meter
) -> tuple[list[float], list[float], list[dict[str, float]]]:
    files = make_files(run.workload, run.www, run.base_url)
    seconds, submit_s, cpu = [], [], []
    for _ in range(run.reps):
        await pg.execute(f"TRUNCATE {TABLE}")
        _fresh(run.out_dir)
        warm_page_cache(run.workload, run.www)
        os.sync()
        meter.start()
        started = time.perf_counter()
        ids = [await peer.submit(f.url) for f in files]
        submitted = time.perf_counter()
        await wait_rows(pg, len(files), worker, run, run.timeout_s())
        seconds.append(time.perf_counter() - started)
        cpu.append(per_file_us(meter.stop(), len(files)))
        submit_s.append(submitted - started)
        await _check(pg, ids, files, run.out_dir)
    return seconds, submit_s, cpu


async def measure(peer: Peer, run: Run) -> dict[str, Any]:
    """Warm up, run the reps, check them; return the run's JSON object."""
    pg = await asyncpg.connect(run.database_url)
    worker = None
    try:
        await pg.execute(CREATE)
        poll_pid = await pg.fetchval("SELECT pg_backend_pid()")
        _fresh(run.out_dir)
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with run.log_path.open("wb") as log:
            # Once, before any clock starts: a blocking spawn costs the measure nothing.
            worker = subprocess.Popen(  # noqa: ASYNC220
                peer.worker_argv(),
                cwd=HERE,
                env=worker_env(run),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        await peer.open(run)
        warm = make_files(
            Workload("warmup", run.warmup, WARMUP.size_bytes, WARMUP.folder), run.www, run.base_url
        )
        for f in warm:
            await peer.submit(f.url)
        await wait_rows(pg, len(warm), worker, run, run.timeout_s())
        families = Families(
            trees={"worker": worker.pid, "redis": run.redis_pid, "nginx": run.nginx_pid},
            database=run.database,
            poll_backend_pid=poll_pid,
        )
        seconds, submit_s, cpu = await _reps(peer, run, pg, worker, Meter(families))
    finally:
        await peer.close()
        stop(worker, peer.stop_signal)
        await pg.close()
        shutil.rmtree(run.out_dir, ignore_errors=True)
    count = run.workload.count
    details = {
        "submit_per_s": spread([count / s for s in submit_s]),
        "config": peer.config,
        "versions": peer.versions(),
        "concurrency": CONCURRENCY,
    }
    return run_result(peer.name, run.workload.to_json(), seconds, cpu, details)


def main(peer: Peer) -> None:
    """Entry point of a peer module run as a script: print the run's JSON object on stdout."""
    print(json.dumps(asyncio.run(measure(peer, Run.from_argv()))))
