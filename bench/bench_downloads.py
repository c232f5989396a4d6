"""Download throughput: Downlink end to end against curl (and aria2c when installed).

The same files, served by the same local file server, are fetched by
  - Downlink: HTTP submit → outbox → Redis lane → downloader → storage → tracker (job completed),
  - curl --parallel (16 connections), writing to a folder,
  - aria2c -j 16, when it is on PATH.
Prints one JSON object. Uses DOWNLINK_BENCH_REDIS_URL / DOWNLINK_BENCH_DATABASE_URL (defaults:
the local servers) and sends traffic to 127.0.0.1 only.

    .venv/bin/python bench/bench_downloads.py [--files 200] [--size-mib 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.gateway.migrations import migrate
from tests.support.file_server import FileServer
from tests.support.ports import free_port

CONCURRENCY = 16


def _run_downlink(urls: list[str], work: Path, redis_url: str, database_url: str) -> float:
    port = free_port()
    env = {
        **os.environ,
        "DOWNLINK_REDIS_URL": redis_url,
        "DOWNLINK_DATABASE_URL": database_url,
        "DOWNLINK_STORAGE_URL": f"file://{work / 'storage'}",
        "DOWNLINK_HTTP_PORT": str(port),
        "DOWNLINK_ALLOW_PRIVATE_NETWORKS": "true",
        "DOWNLINK_DOWNLOAD_CONCURRENCY": str(CONCURRENCY),
        "DOWNLINK_PER_HOST_CONCURRENCY": str(CONCURRENCY),
        "DOWNLINK_LOG_LEVEL": "WARNING",
    }
    cli = [sys.executable, "-m", "services.cli"]
    token = subprocess.run(
        [*cli, "token", "create", "bench"], env=env, capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    services = [
        subprocess.Popen([*cli, name], env=env, stderr=subprocess.DEVNULL)
        for name in ("gateway", "downloader")
    ]
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, trust_env=False
        ) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("gateway did not become ready")
                time.sleep(0.1)
            time.sleep(1)  # let the downloader join its group
            started = time.monotonic()
            job = client.post("/api/v1/downloads/download", json={"urls": urls}).json()
            while True:
                status = client.get(f"/api/v1/downloads/jobs/{job['job_id']}").json()
                if status["status"] in {"completed", "partial", "failed"}:
                    break
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            if status["status"] != "completed":
                raise SystemExit(f"downlink job ended {status['status']}")
            return elapsed
    finally:
        for process in services:
            process.terminate()
        for process in services:
            process.wait(timeout=30)


def _run_curl(urls: list[str], work: Path) -> float | None:
    if shutil.which("curl") is None:
        return None
    out = work / "curl"
    out.mkdir()
    args = ["curl", "--silent", "--no-progress-meter", "--fail", "--parallel"]
    args += ["--parallel-max", str(CONCURRENCY)]
    for index, url in enumerate(urls):
        args += ["-o", str(out / f"{index}"), url]
    started = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - started


def _run_aria2c(urls: list[str], work: Path) -> float | None:
    if shutil.which("aria2c") is None:
        return None
    out = work / "aria2"
    out.mkdir()
    listing = work / "aria2.txt"
    listing.write_text("".join(f"{url}\n  out={index}\n" for index, url in enumerate(urls)))
    started = time.monotonic()
    subprocess.run(
        ["aria2c", "-q", "-j", str(CONCURRENCY), "-x", "1", "-d", str(out), "-i", str(listing)],
        check=True,
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size-mib", type=float, default=4.0)
    args = parser.parse_args()
    redis_url = os.environ.get("DOWNLINK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    server_url = os.environ.get(
        "DOWNLINK_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432"
    )
    database_url = f"{server_url.rstrip('/')}/downlink_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(migrate(database_url))
    redis.Redis.from_url(redis_url).flushdb()
    try:
        report = _compare(args.files, int(args.size_mib * 1024 * 1024), redis_url, database_url)
    finally:
        asyncio.run(_drop(server_url, database_url.rsplit("/", 1)[1]))
    print(json.dumps(report, indent=2))


async def _drop(server_url: str, name: str) -> None:
    connection = await asyncpg.connect(f"{server_url.rstrip('/')}/postgres")
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def _compare(files: int, size: int, redis_url: str, database_url: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, FileServer(Path(tmp) / "served") as server:
        work = Path(tmp)
        urls = [server.add_file(f"f{index:05d}.bin", size=size)[0] for index in range(files)]
        total_mb = files * size / 1e6
        results: dict[str, float | None] = {
            "downlink": _run_downlink(urls, work, redis_url, database_url),
            "curl": _run_curl(urls, work),
            "aria2c": _run_aria2c(urls, work),
        }
        stored = sorted((work / "storage").rglob("*.bin"))
        if len(stored) != files or any(p.stat().st_size != size for p in stored):
            raise SystemExit("downlink stored the wrong files")

    report = {
        "benchmark": "downloads",
        "files": files,
        "file_size_bytes": size,
        "concurrency": CONCURRENCY,
        "tools": {
            name: None
            if seconds is None
            else {
                "seconds": round(seconds, 3),
                "files_per_s": round(files / seconds, 1),
                "mb_per_s": round(total_mb / seconds, 1),
            }
            for name, seconds in results.items()
        },
    }
    downlink_s = results["downlink"]
    assert downlink_s is not None
    for reference in ("curl", "aria2c"):
        if (seconds := results[reference]) is not None:
            # Above 1: Downlink finished first.
            report[f"speed_vs_{reference}"] = round(seconds / downlink_s, 2)
    return report


if __name__ == "__main__":
    main()
