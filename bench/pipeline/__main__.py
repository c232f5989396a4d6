"""Downlink end to end beside Celery, arq, taskiq, curl and aria2c in one sitting.

    bench/.venvs/peers/bin/python bench/pipeline [--workloads tiny5k,small] [--quick] [...]

Each system does the same work per file: GET over loopback from one nginx → a file on disk and
its SHA-256 → a row in PostgreSQL, 16 downloads at a time, completion polled. Every (workload,
system) run gets a fresh redis-server, a fresh PostgreSQL database and a fresh output folder, and
runs as its own subprocess in the system's venv. Prints one JSON line per run, then a summary with
Downlink's ratios to each other system. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import references
from fileserver import FileServer
from processes import ThrowawayRedis
from report import summary
from workloads import FULL, QUICK, WARMUP, Workload, make_files

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
QUEUES = ("downlink", "celery", "arq", "taskiq")
REFERENCES = ("curl", "aria2c")
REFERENCE_WORKLOADS = ("small", "large")  # a bare transfer tool tells little about 1 KiB jobs
RUNNERS = {
    "downlink": ("peers", "downlink_runner.py"),
    "celery": ("peers", "peer_celery.py"),
    "arq": ("arq", "peer_arq.py"),
    "taskiq": ("peers", "peer_taskiq.py"),
}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads",
        default="tiny5k,tiny10k,small,large",
        help=f"comma-separated, of {', '.join(FULL)}",
    )
    parser.add_argument(
        "--systems",
        default=",".join(QUEUES + REFERENCES),
        help=f"comma-separated, of {', '.join(QUEUES + REFERENCES)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: small counts, a 64 MiB large file, 1 rep, short warm-up",
    )
    parser.add_argument("--reps", type=int, help="timed reps per run (default 3; --quick: 1)")
    parser.add_argument(
        "--warmup", type=int, help=f"warm-up files (default {WARMUP.count}; --quick: 20)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/downlink-bench"),
        help="test files (kept between sittings), outputs, logs",
    )
    parser.add_argument("--venvs", type=Path, default=REPO / "bench" / ".venvs")
    parser.add_argument("--downlink-python", default=str(REPO / ".venv" / "bin" / "python"))
    parser.add_argument(
        "--downlink-src",
        type=Path,
        default=REPO,
        help="the checkout Downlink runs from (e.g. a git worktree)",
    )
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432",
        help="PostgreSQL server; each run gets its own database on it",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON lines to this file")
    args = parser.parse_args()
    table = QUICK if args.quick else FULL
    unknown = {w for w in args.workloads.split(",") if w not in table}
    unknown |= {s for s in args.systems.split(",") if s not in QUEUES + REFERENCES}
    if unknown:
        parser.error(f"unknown workload or system: {', '.join(sorted(unknown))}")
    args.workload_list = [table[w] for w in args.workloads.split(",")]
    args.system_list = [s for s in QUEUES + REFERENCES if s in args.systems.split(",")]
    args.reps = args.reps or (1 if args.quick else 3)
    args.warmup = args.warmup or (20 if args.quick else WARMUP.count)
    return args


async def _database(server: str, name: str, create: bool) -> None:
    connection = await asyncpg.connect(f"{server}/postgres")
    try:
        if create:
            await connection.execute(f'CREATE DATABASE "{name}"')
        else:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def _run_queue(
    system: str, workload: Workload, args: argparse.Namespace, server: FileServer
) -> dict[str, Any]:
    """One queue system on one workload, in its own venv, with its own Redis and database."""
    venv, script = RUNNERS[system]
    python = args.venvs / venv / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{python} is missing: run bench/pipeline/setup.sh")
    database = f"bench_{system}_{uuid.uuid4().hex[:8]}"
    work = args.work_dir / "runs" / f"{workload.name}-{system}"
    asyncio.run(_database(args.postgres, database, create=True))
    try:
        with ThrowawayRedis(work / "redis") as redis:
            config = {
                "workload": workload.to_json(),
                "www": str(args.work_dir / "www"),
                "base_url": server.base_url,
                "redis_url": redis.url,
                "redis_pid": redis.pid,
                "nginx_pid": server.pid,
                "database_url": f"{args.postgres}/{database}",
                "database": database,
                "out_dir": str(work / "out"),
                "log_path": str(args.work_dir / "logs" / f"{workload.name}-{system}.log"),
                "reps": args.reps,
                "warmup": args.warmup,
                "extra": {
                    "downlink_python": args.downlink_python,
                    "downlink_src": str(args.downlink_src),
                },
            }
            budget_s = 600 + args.reps * (120 + workload.count / 10 + workload.mib / 20)
            done = subprocess.run(
                [str(python), str(HERE / script), json.dumps(config)],
                cwd=HERE,
                stdout=subprocess.PIPE,
                text=True,
                timeout=budget_s,
                check=False,
            )
    finally:
        asyncio.run(_database(args.postgres, database, create=False))
    if done.returncode:
        raise RuntimeError(f"{script} exited with {done.returncode} (its stderr is above)")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _run(
    system: str, workload: Workload, args: argparse.Namespace, server: FileServer
) -> dict[str, Any]:
    print(
        f"== {workload.name} ({workload.count} x {workload.size_bytes} B): {system}",
        file=sys.stderr,
    )
    started = time.monotonic()
    try:
        if system in REFERENCES:
            files = make_files(workload, args.work_dir / "www", server.base_url)
            work = args.work_dir / "runs" / f"{workload.name}-{system}"
            return references.measure(
                system, workload, files, args.work_dir / "www", work, server.pid, args.reps
            )
        return _run_queue(system, workload, args, server)
    except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as error:
        return {
            "workload": workload.name,
            "system": system,
            "failed": f"{type(error).__name__}: {error}",
        }
    finally:
        print(f"   {system} took {time.monotonic() - started:.0f} s", file=sys.stderr)


def main() -> int:
    args = _parse()
    www = args.work_dir / "www"
    for workload in args.workload_list:  # made (or re-hashed) before any clock starts
        make_files(workload, www, "")
    make_files(Workload("warmup", args.warmup, WARMUP.size_bytes, WARMUP.folder), www, "")
    results = []
    with (
        args.output.open("w") if args.output else contextlib.nullcontext() as output,
        FileServer(www, args.work_dir / "nginx") as server,
    ):
        for workload in args.workload_list:
            for system in args.system_list:
                if system in REFERENCES and workload.name not in REFERENCE_WORKLOADS:
                    continue
                result = _run(system, workload, args, server)
                results.append(result)
                for stream in filter(None, (sys.stdout, output)):
                    print(json.dumps(result), file=stream, flush=True)
        final = summary(results)
        for stream in filter(None, (sys.stdout, output)):
            print(json.dumps(final, indent=2), file=stream, flush=True)
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
