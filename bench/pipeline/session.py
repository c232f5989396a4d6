"""One running stack for the scenarios: start and warm it, and time jobs on it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from downlink_runner import FINAL, SERVICE_WORDS, Api, Stack, clear_storage
from meter import Families, Meter, per_file_us
from peer_runner import POLL_S, Run
from workloads import WARMUP, TestFile, Workload, make_files, warm_page_cache


@dataclass
class Session:
    """A running stack and what a timed run needs: its API, its meter, the served files."""

    run: Run
    stack: Stack
    api: Api
    token: str
    meter: Meter
    files: list[TestFile]


@dataclass
class Timed:
    """One timed run: wall seconds, CPU µs per file by family, its job ids."""

    seconds: float
    cpu_us: dict[str, float]
    jobs: list[str]
    files: int


def wait_each(api: Api, jobs: list[str]) -> None:
    """Poll one job at a time until each is final; anything but `completed` fails the run."""
    deadline = time.monotonic() + api.timeout_s
    for job in jobs:
        while (status := api.status(job))["status"] not in FINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} not final after {api.timeout_s:.0f} s")
            time.sleep(POLL_S)
        if status["status"] != "completed":
            raise RuntimeError(f"job {job} ended {status['status']}: {status.get('progress')}")


def prepare(session: Session) -> None:
    """Before a clock starts: an empty storage folder, the sources in the page cache, a sync."""
    clear_storage(session.run.out_dir)
    warm_page_cache(session.run.workload, session.run.www)
    os.sync()


def timed(session: Session, batches: list[list[TestFile]]) -> Timed:
    """Submit one job per batch back to back; the clock stops when the last one is final."""
    prepare(session)
    session.meter.start()
    started = time.perf_counter()
    jobs = [job for batch in batches for job in session.api.submit(batch)]
    wait_each(session.api, jobs)
    seconds = time.perf_counter() - started
    count = sum(len(batch) for batch in batches)
    cpu = per_file_us(session.meter.stop(), count)
    session.api.check(jobs, [f for batch in batches for f in batch])
    return Timed(seconds, cpu, jobs, count)


def open_session(run: Run) -> Session:
    """Start the stack, warm it up (workers, connections, caches) and meter its processes."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(run)
    token = stack.start()
    api = Api(stack.base_url, token, run.timeout_s())
    assert stack.process is not None
    families = Families(
        trees={"downlink": stack.process.pid, "redis": run.redis_pid, "nginx": run.nginx_pid},
        split_words={"downlink": SERVICE_WORDS},
        database=run.database,
    )
    warm = make_files(
        Workload("warmup", run.warmup, WARMUP.size_bytes, WARMUP.folder), run.www, run.base_url
    )
    jobs = api.submit(warm)
    wait_each(api, jobs)
    api.check(jobs, warm)
    files = make_files(run.workload, run.www, run.base_url)
    return Session(run, stack, api, token, Meter(families), files)
