"""Downlink's task worker beside arq and Celery on no-op and sleeping tasks, in one sitting.

    bench/.venvs/peers/bin/python bench/tasks [--workloads noop,sleep10,slots256] [--reps 3] [...]

Each system runs the same tasks (nothing, or a sleep) in ONE worker process with the workload's
slots, and records each task in PostgreSQL (see bench/README.md, "Tasks", for what each side
records). Every (workload, system) run gets a fresh redis-server, a fresh PostgreSQL database
and runs as its own subprocess in the system's venv (bench/pipeline's machinery). Prints one JSON
line per run, then a summary with Downlink's ratios and the issue's targets, and one line per
workload on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PIPELINE = HERE.parent / "pipeline"
sys.path[1:1] = [str(PIPELINE)]  # the pipeline bench's modules: isolation, meter, report ...

from isolation import add_world_options, run_isolated  # noqa: E402
from report import emit  # noqa: E402
from task_report import summary  # noqa: E402
from task_workloads import FULL, QUICK, TaskWorkload  # noqa: E402

RUNNERS = {
    "downlink": ("peers", "downlink_tasks.py"),
    "arq": ("arq", "arq_tasks.py"),
    "celery": ("peers", "celery_tasks.py"),
}
WARMUP = 200


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench-tasks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads", default=",".join(FULL), help="comma-separated, of " + ", ".join(FULL)
    )
    parser.add_argument(
        "--systems", default=",".join(RUNNERS), help="comma-separated, of " + ", ".join(RUNNERS)
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: small counts, 1 rep, 50 warm-up tasks"
    )
    parser.add_argument(
        "--warmup", type=int, help=f"warm-up no-op tasks (default {WARMUP}; --quick: 50)"
    )
    add_world_options(parser, Path("/tmp/downlink-bench-tasks"))
    args = parser.parse_args()
    table = QUICK if args.quick else FULL
    workloads, systems = args.workloads.split(","), args.systems.split(",")
    unknown = {w for w in workloads if w not in table} | {s for s in systems if s not in RUNNERS}
    if unknown:
        parser.error(f"unknown workload or system: {', '.join(sorted(unknown))}")
    args.workload_list = [table[w] for w in workloads]
    args.system_list = [s for s in RUNNERS if s in systems]
    args.reps = args.reps or (1 if args.quick else 3)
    args.warmup = args.warmup or (50 if args.quick else WARMUP)
    return args


def _run(system: str, workload: TaskWorkload, args: argparse.Namespace) -> dict[str, Any]:
    print(f"== {workload.name} ({workload.count} x {workload.task}, {workload.slots} slots): "
          f"{system}", file=sys.stderr)  # fmt: skip
    label = f"{workload.name}-{system}"
    venv, script = RUNNERS[system]
    work = args.work_dir / "runs" / label
    config = {
        "workload": workload.to_json(),
        "out_dir": str(work / "out"),
        "log_path": str(args.work_dir / "logs" / f"{label}.log"),
        "reps": args.reps,
        "warmup": args.warmup,
        "extra": {"downlink_python": args.downlink_python, "downlink_src": str(args.downlink_src)},
    }
    started = time.monotonic()
    try:
        return run_isolated(
            label=label,
            python=args.venvs / venv / "bin" / "python",
            script=HERE / script,
            postgres=args.postgres,
            work=work,
            config=config,
            budget_s=600 + args.reps * (120 + workload.count / 20),
            # The runner and its worker import the pipeline's modules as well as ours.
            env={**os.environ, "PYTHONPATH": os.pathsep.join((str(HERE), str(PIPELINE)))},
        )
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
    results = []
    with args.output.open("w") if args.output else contextlib.nullcontext() as output:
        for workload in args.workload_list:
            for system in args.system_list:
                results.append(_run(system, workload, args))
                emit(results[-1], output)
        final = summary(results)
        emit(final, output, indent=2)
    for entry in final["summary"].values():
        print(entry["line"], file=sys.stderr)
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
