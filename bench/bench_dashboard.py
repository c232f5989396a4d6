"""Page load of the dashboard with a lot on record: the jobs list with 10,000 jobs, and the page
of a 10,000-file job.

One gateway process on local Redis and PostgreSQL, and no downloader, so the jobs stay pending
and their URLs (on 127.0.0.1) are never fetched. It prints one JSON object with the time to the
last byte of each page, from a signed-in session, and the gateway's CPU per page. It uses
DOWNLINK_BENCH_REDIS_URL and DOWNLINK_BENCH_DATABASE_URL (defaults: the local servers) and sends
traffic to 127.0.0.1 only.

    .venv/bin/python bench/bench_dashboard.py [--jobs 10000] [--files 10000] [--loads 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lone_gateway import cpu_seconds, lone_gateway

# Nothing listens here and nothing fetches it: the jobs only have to be on record.
NOWHERE = "http://127.0.0.1:9/tile"


async def _fill(client: httpx.AsyncClient, jobs: int, files: int) -> str:
    """`jobs` one-file jobs and one job of `files` files; the big job's id."""
    pending = list(range(jobs))

    async def submitter() -> None:
        while pending:
            n = pending.pop()
            body = {"urls": [f"{NOWHERE}-{n}.tif"], "metadata": {"scene": f"T{n:05d}"}}
            response = await client.post("/api/v1/downloads/download", json=body)
            response.raise_for_status()

    await asyncio.gather(*(submitter() for _ in range(16)))
    big = {"urls": [f"{NOWHERE}-big-{n}.tif" for n in range(files)]}
    response = await client.post("/api/v1/downloads/download", json=big)
    response.raise_for_status()
    job_id: str = response.json()["job_id"]
    return job_id


async def _timed_loads(
    client: httpx.AsyncClient, path: str, loads: int, pid: int
) -> dict[str, float]:
    await client.get(path)  # warm-up: templates compiled, statements prepared
    times = []
    cpu_before = cpu_seconds(pid)
    for _ in range(loads):
        started = time.perf_counter()
        response = await client.get(path)
        times.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"{path}: {response.status_code} {response.text[:300]}")
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "p50_ms": round(1000 * statistics.median(times), 1),
        "p95_ms": round(1000 * sorted(times)[int(0.95 * (len(times) - 1))], 1),
        "gateway_cpu_ms_per_load": round(1000 * cpu / loads, 1),
        "bytes": len(response.content),
    }


async def _measure(base: str, token: str, pid: int, args: argparse.Namespace) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=base, headers=headers, trust_env=False, timeout=120
    ) as api:
        started = time.perf_counter()
        big_job = await _fill(api, args.jobs, args.files)
        filled_s = time.perf_counter() - started
    async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=120) as browser:
        signed_in = await browser.post("/dashboard/sessions", data={"token": token})
        if signed_in.status_code not in (200, 303):
            raise SystemExit(f"sign-in: {signed_in.status_code} {signed_in.text[:300]}")
        jobs_list = await _timed_loads(browser, "/dashboard/jobs/", args.loads, pid)
        job_page = await _timed_loads(browser, f"/dashboard/jobs/{big_job}", args.loads, pid)
    return {
        "benchmark": "dashboard",
        "jobs_on_record": args.jobs + 1,
        "files_in_the_big_job": args.files,
        "fill_s": round(filled_s, 1),
        "jobs_list": jobs_list,
        "job_page": job_page,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="one-file jobs on record")
    parser.add_argument("--files", type=int, default=10_000, help="files of the big job")
    parser.add_argument("--loads", type=int, default=20, help="timed loads of each page")
    args = parser.parse_args()
    with lone_gateway() as gateway:
        report = asyncio.run(_measure(gateway.url, gateway.token, gateway.pid, args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
