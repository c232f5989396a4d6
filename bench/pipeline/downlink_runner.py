"""Downlink end to end: the bench starts `downlink stack` itself, then drives its HTTP API only.

Per run: migrate the run's fresh database, make a token, start the stack (gateway with relay and
tracker, downloader, processor, exporter) from the repo's own venv, wait for /ready, run one
warm-up job, then per rep submit the workload (jobs of at most 10,000 URLs), poll each job's
status every POLL_S until it is final, and check every file's SHA-256 and size in the result.
The status polls cost the gateway and PostgreSQL CPU: after the reps, POLL_PROBES extra status
GETs price one poll, and `total_excl_polls` subtracts them, as the peers' poll is not counted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from meter import Families, Meter, per_file_us
from peer_runner import CONCURRENCY, POLL_S, Run, World
from processes import free_port, stop
from report import run_result, spread
from workloads import WARMUP, TestFile, Workload, make_files, warm_page_cache

FINAL = {"completed", "partial", "failed", "cancelled"}
MAX_URLS_PER_JOB = 10_000
POLL_PROBES = 200
SERVICE_WORDS = ("gateway", "downloader", "processor", "exporter", "stack")


def downlink_env(run: World, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOWNLINK_", "OTEL_"))}
    src = run.extra["downlink_src"]
    return {
        **env,
        "PYTHONPATH": src,
        "DOWNLINK_REDIS_URL": run.redis_url,
        "DOWNLINK_DATABASE_URL": run.database_url,
        "DOWNLINK_STORAGE_URL": f"file://{run.out_dir}",
        "DOWNLINK_HTTP_HOST": "127.0.0.1",
        "DOWNLINK_HTTP_PORT": str(port),
        "DOWNLINK_ALLOW_PRIVATE_NETWORKS": "true",
        "DOWNLINK_DOWNLOAD_CONCURRENCY": str(CONCURRENCY),
        "DOWNLINK_PER_HOST_CONCURRENCY": str(CONCURRENCY),
        "DOWNLINK_LOG_LEVEL": "WARNING",
    }


class Stack:
    """A Downlink command (`downlink stack` by default) as our own child process, with a token
    of its own; `launch` starts more of them (e.g. a task worker) on the same settings."""

    def __init__(self, run: World, command: tuple[str, ...] = ("stack",)) -> None:
        self.run = run
        self.command = command
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = downlink_env(run, self.port)
        self.cli = [run.extra["downlink_python"], "-m", "services.cli"]
        self.process: subprocess.Popen[bytes] | None = None

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [*self.cli, *args],
            env=self.env,
            cwd=self.run.extra["downlink_src"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"downlink {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    def launch(
        self, args: tuple[str, ...], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`downlink ARGS` in its own session, its output in `log_path`; `env` added."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            return subprocess.Popen(
                [*self.cli, *args],
                env={**self.env, **(env or {})},
                cwd=self.run.extra["downlink_src"],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def start(self) -> str:
        """Migrate, make a token, start the command and wait for /ready; returns the token."""
        self._cli("migrate")
        token = self._cli("token", "create", "bench").split()[-1]
        self.process = self.launch(self.command, self.run.log_path)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"downlink {self.command[0]} exited with {self.process.returncode}; "
                    f"see {self.run.log_path}"
                )
            try:
                if (
                    httpx.get(f"{self.base_url}/ready", timeout=2, trust_env=False).status_code
                    == 200
                ):
                    return token
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the gateway was not ready within 90 s; see {self.run.log_path}")

    def stop(self) -> None:
        stop(self.process, signal.SIGTERM, grace_s=45)  # the services' own 30 s grace, and some


class Api:
    """The few routes the bench uses, counting status GETs."""

    def __init__(self, base_url: str, token: str, timeout_s: float) -> None:
        self.client = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            trust_env=False,
        )
        self.timeout_s, self.status_gets = timeout_s, 0

    def submit(self, files: list[TestFile]) -> list[str]:
        jobs = []
        for start in range(0, len(files), MAX_URLS_PER_JOB):
            urls = [f.url for f in files[start : start + MAX_URLS_PER_JOB]]
            response = self.client.post(
                "/api/v1/downloads/download", json={"urls": urls, "metadata": {"bench": "pipeline"}}
            )
            if response.status_code != 202:
                answer = f"{response.status_code}: {response.text[:300]}"
                raise RuntimeError(f"submit of {len(urls)} URLs answered {answer}")
            jobs.append(response.json()["job_id"])
        return jobs

    def status(self, job_id: str) -> dict[str, Any]:
        self.status_gets += 1
        response = self.client.get(f"/api/v1/downloads/jobs/{job_id}")
        response.raise_for_status()
        status: dict[str, Any] = response.json()
        return status

    def wait(self, jobs: list[str]) -> None:
        deadline, left = time.monotonic() + self.timeout_s, set(jobs)
        while left:
            time.sleep(POLL_S)
            for job in sorted(left):
                status = self.status(job)
                if status["status"] in FINAL:
                    if status["status"] != "completed":
                        raise RuntimeError(
                            f"job {job} ended {status['status']}: {status.get('progress')}"
                        )
                    left.discard(job)
            if left and time.monotonic() > deadline:
                raise TimeoutError(f"{len(left)} job(s) not final after {self.timeout_s:.0f} s")

    def check(self, jobs: list[str], files: list[TestFile]) -> None:
        got = {}
        for job in jobs:
            response = self.client.get(f"/api/v1/downloads/jobs/{job}/result")
            response.raise_for_status()
            got.update(
                {r["url"]: (r.get("hash"), r.get("size")) for r in response.json()["results"]}
            )
        wrong = [f.url for f in files if got.get(f.url) != (f.sha256, f.size_bytes)]
        if wrong:
            raise AssertionError(
                f"{len(wrong)} of {len(files)} files missing or wrong, e.g. {wrong[0]}"
            )


def clear_storage(root: Path) -> None:
    """Drop the last rep's files (one folder per user); the storage's own dot-folders stay."""
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            shutil.rmtree(entry)


def _poll_cost_us(api: Api, job: str, meter: Meter) -> float:
    """CPU of one status GET outside this driver (gateway, PostgreSQL, Redis), in µs."""
    meter.start()
    for _ in range(POLL_PROBES):
        api.status(job)
    cost = per_file_us(meter.stop(), POLL_PROBES)
    return cost["total"] - cost["driver"]


def measure(run: Run) -> dict[str, Any]:
    files = make_files(run.workload, run.www, run.base_url)
    warm = make_files(
        Workload("warmup", run.warmup, WARMUP.size_bytes, WARMUP.folder), run.www, run.base_url
    )
    run.out_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(run)
    try:
        api = Api(stack.base_url, stack.start(), run.timeout_s())
        assert stack.process is not None
        families = Families(
            trees={"downlink": stack.process.pid, "redis": run.redis_pid, "nginx": run.nginx_pid},
            split_words={"downlink": SERVICE_WORDS},
            database=run.database,
        )
        meter = Meter(families)
        jobs = api.submit(warm)
        api.wait(jobs)
        api.check(jobs, warm)
        seconds, cpu, polls = [], [], []
        for _ in range(run.reps):
            clear_storage(run.out_dir)
            warm_page_cache(run.workload, run.www)
            os.sync()
            gets = api.status_gets
            meter.start()
            started = time.perf_counter()
            jobs = api.submit(files)
            api.wait(jobs)
            seconds.append(time.perf_counter() - started)
            cpu.append(per_file_us(meter.stop(), len(files)))
            polls.append(api.status_gets - gets)
            api.check(jobs, files)
        poll_us = _poll_cost_us(api, jobs[-1], meter)
    finally:
        stack.stop()
        shutil.rmtree(run.out_dir, ignore_errors=True)
    for rep, count in zip(cpu, polls, strict=True):
        rep["total_excl_polls"] = rep["total"] - count * poll_us / len(files)
    details = {
        "status_polls_per_rep": spread([float(p) for p in polls], 0),
        "poll_cost_us": round(poll_us),
        "config": f"downlink stack (gateway+relay+tracker, downloader, processor, exporter); "
        f"DOWNLINK_DOWNLOAD_CONCURRENCY={CONCURRENCY}, "
        f"DOWNLINK_PER_HOST_CONCURRENCY={CONCURRENCY}, DOWNLINK_LOG_LEVEL=WARNING; "
        f"status poll every {POLL_S} s",
        "downlink_src": run.extra["downlink_src"],
    }
    return run_result("downlink", run.workload.to_json(), seconds, cpu, details)


if __name__ == "__main__":
    print(json.dumps(measure(Run.from_argv())))
