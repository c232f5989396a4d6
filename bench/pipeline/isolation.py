"""One runner script in a world of its own: a fresh PostgreSQL database, a throwaway Redis.

Every run of every bench (the pipeline's and the tasks') goes through `run_isolated`: the runner
gets those on argv[1] as JSON (see peer_runner.World), prints its result as its last line of
stdout, and the database is dropped afterwards whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from processes import ThrowawayRedis

REPO = Path(__file__).resolve().parents[2]


async def _database(server: str, name: str, create: bool) -> None:
    connection = await asyncpg.connect(f"{server}/postgres")
    try:
        if create:
            await connection.execute(f'CREATE DATABASE "{name}"')
        else:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def run_isolated(
    *,
    label: str,
    python: Path,
    script: Path,
    postgres: str,
    work: Path,
    config: dict[str, Any],
    budget_s: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `script` with `python` (a venv's) on `config` plus its Redis and database; its result."""
    if not python.exists():
        raise RuntimeError(f"{python} is missing: run bench/pipeline/setup.sh")
    database = f"bench_{label.rsplit('-', 1)[-1]}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_database(postgres, database, create=True))
    try:
        with ThrowawayRedis(work / "redis") as redis:
            world = {
                **config,
                "redis_url": redis.url,
                "redis_pid": redis.pid,
                "database_url": f"{postgres}/{database}",
                "database": database,
            }
            done = subprocess.run(
                [str(python), str(script), json.dumps(world)],
                cwd=script.parent,
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                timeout=budget_s,
                check=False,
            )
    finally:
        asyncio.run(_database(postgres, database, create=False))
    if done.returncode:
        raise RuntimeError(f"{script.name} exited with {done.returncode} (its stderr is above)")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def add_world_options(parser: argparse.ArgumentParser, work_dir: Path) -> None:
    """The options every bench shares: reps, folders, venvs, which Downlink, which PostgreSQL."""
    parser.add_argument("--reps", type=int, help="timed reps per run (default 3; --quick: 1)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=work_dir,
        help=f"test files (kept between sittings), outputs, logs (default {work_dir})",
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
