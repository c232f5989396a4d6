"""Downlink end to end beside Celery, arq, taskiq, curl and aria2c in one sitting.

    bench/.venvs/peers/bin/python bench/pipeline [--workloads tiny5k,small] [--quick] [...]

Each system does the same work per file: GET over loopback from one nginx → a file on disk and
its SHA-256 → a row in PostgreSQL, 16 downloads at a time, completion polled. Every (workload,
system) run gets a fresh redis-server, a fresh PostgreSQL database and a fresh output folder, and
runs as its own subprocess in the system's venv. Then the Downlink-only scenarios (`--scenarios`:
flat, concurrent, pollers; see scenarios.py), each in a world of its own too. Prints one JSON line
per run, then a summary with Downlink's ratios to each other system and the scenarios' targets.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import references
from fileserver import FileServer
from isolation import add_world_options, run_isolated
from report import emit, scenario_summary, summary
from workloads import (
    FULL,
    KIB,
    QUICK,
    SCENARIOS_FULL,
    SCENARIOS_QUICK,
    WARMUP,
    Workload,
    make_files,
    scenario_counts,
)

HERE = Path(__file__).resolve().parent
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
        help=f"comma-separated, of {', '.join(FULL)}, or none (default: all; none when only "
        "--scenarios is given)",
    )
    parser.add_argument(
        "--scenarios",
        help=f"Downlink-only, comma-separated, of {', '.join(SCENARIOS_FULL)}, or none "
        "(default: all; none when only --workloads is given)",
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
    parser.add_argument(
        "--poller-pause-ms",
        type=int,
        default=0,
        help="pollers scenario: each client waits this long after an answer (default 0: flat out)",
    )
    parser.add_argument(
        "--warmup", type=int, help=f"warm-up files (default {WARMUP.count}; --quick: 20)"
    )
    add_world_options(parser, Path("/tmp/downlink-bench"))
    args = parser.parse_args()
    table = QUICK if args.quick else FULL
    scenarios = SCENARIOS_QUICK if args.quick else SCENARIOS_FULL
    workloads = _names(args.workloads, args.scenarios, table)
    scenario_names = _names(args.scenarios, args.workloads, scenarios)
    unknown = {w for w in workloads if w not in table}
    unknown |= {s for s in scenario_names if s not in scenarios}
    unknown |= {s for s in args.systems.split(",") if s not in QUEUES + REFERENCES}
    if unknown:
        parser.error(f"unknown workload, scenario or system: {', '.join(sorted(unknown))}")
    args.workload_list = [table[w] for w in workloads]
    args.scenario_list = {name: dict(scenarios[name]) for name in scenario_names}
    if "pollers" in args.scenario_list and args.poller_pause_ms:
        args.scenario_list["pollers"]["pause_ms"] = args.poller_pause_ms
    args.system_list = [s for s in QUEUES + REFERENCES if s in args.systems.split(",")]
    args.reps = args.reps or (1 if args.quick else 3)
    args.warmup = args.warmup or (20 if args.quick else WARMUP.count)
    return args


def _names(given: str | None, other: str | None, table: dict[str, Any]) -> list[str]:
    """One of --workloads/--scenarios: all by default, none when only the other is given."""
    if given is None:
        return list(table) if other is None else []
    return [] if given == "none" else given.split(",")


def _isolated(
    label: str,
    script: str,
    venv: str,
    workload: Workload,
    args: argparse.Namespace,
    server: FileServer,
    budget_s: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Run one runner script in its venv, with its own Redis, database and output folder."""
    work = args.work_dir / "runs" / label
    config = {
        "workload": workload.to_json(),
        "www": str(args.work_dir / "www"),
        "base_url": server.base_url,
        "nginx_pid": server.pid,
        "out_dir": str(work / "out"),
        "log_path": str(args.work_dir / "logs" / f"{label}.log"),
        "reps": args.reps,
        "warmup": args.warmup,
        "extra": {
            "downlink_python": args.downlink_python,
            "downlink_src": str(args.downlink_src),
            **extra,
        },
    }
    return run_isolated(
        label=label,
        python=args.venvs / venv / "bin" / "python",
        script=HERE / script,
        postgres=args.postgres,
        work=work,
        config=config,
        budget_s=budget_s or 600 + args.reps * (120 + workload.count / 10 + workload.mib / 20),
    )


def scenario_files(name: str, params: dict[str, int]) -> Workload:
    """The files a scenario uses: the first ones of the `tiny` folder (1 KiB each)."""
    return Workload(f"scenario-{name}", max(scenario_counts(name, params)), KIB, "tiny")


def _scenario(
    name: str, params: dict[str, int], args: argparse.Namespace, server: FileServer
) -> dict[str, Any]:
    """One Downlink-only scenario, in its own world like any run."""
    print(f"== scenario {name} {params}: downlink", file=sys.stderr)
    counts = scenario_counts(name, params)
    # Roomy, like the workloads': 10 files/s for every timed run of every rep.
    budget_s = 600 + args.reps * (120 * len(counts) + sum(counts) / 10)
    started = time.monotonic()
    try:
        result = _isolated(
            f"scenario-{name}-downlink", "scenarios.py", "peers",
            scenario_files(name, params), args, server, budget_s, scenario=name, params=params,
        )  # fmt: skip
    except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as error:
        failed = f"{type(error).__name__}: {error}"
        return {"scenario": name, "system": "downlink", "failed": failed}
    finally:
        print(f"   scenario {name} took {time.monotonic() - started:.0f} s", file=sys.stderr)
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
        venv, script = RUNNERS[system]
        return _isolated(f"{workload.name}-{system}", script, venv, workload, args, server)
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
    for name, params in args.scenario_list.items():
        make_files(scenario_files(name, params), www, "")
    make_files(Workload("warmup", args.warmup, WARMUP.size_bytes, WARMUP.folder), www, "")
    results, scenarios = [], []
    with (
        args.output.open("w") if args.output else contextlib.nullcontext() as output,
        FileServer(www, args.work_dir / "nginx") as server,
    ):
        for workload in args.workload_list:
            for system in args.system_list:
                if system in REFERENCES and workload.name not in REFERENCE_WORKLOADS:
                    continue
                results.append(_run(system, workload, args, server))
                emit(results[-1], output)
        for name, params in args.scenario_list.items():
            scenarios.append(_scenario(name, params, args, server))
            emit(scenarios[-1], output)
        final = summary(results) if results else {}
        if scenarios:
            final["scenarios"] = scenario_summary(scenarios)
        emit(final, output, indent=2)
    return 1 if any("failed" in r for r in results + scenarios) else 0


if __name__ == "__main__":
    sys.exit(main())
