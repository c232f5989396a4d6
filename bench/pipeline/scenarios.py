"""Downlink against itself, in one stack: does a job's rate hold as jobs grow, multiply, get polled?

    (from __main__.py) bench/.venvs/peers/bin/python bench/pipeline/scenarios.py CONFIG_JSON

Per run: the stack of `downlink_runner` (fresh database and Redis, its own token), a warm-up job,
then per rep the scenario's timed runs, each from an empty storage folder and a warm page cache,
the clock running from the first submit until the last job is final (one status GET per POLL_S,
one job at a time, so twenty jobs cost the gateway no more polls than one). Every file's SHA-256
and size is checked after each timed run.

- `flat`: one small job, then one large one (the order swaps every rep): files/s of each and
  their ratio (the issue's target: large ÷ small >= 0.85).
- `concurrent`: N jobs of M files submitted back to back, against one job of N*M files: files/s
  of each and their ratio (target >= 1).
- `pollers`: see pollers.py.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

from peer_runner import POLL_S, Run
from pollers import pollers
from report import spread
from session import Timed, open_session, timed

if TYPE_CHECKING:
    from session import Session
    from workloads import TestFile


def _side(runs: list[Timed]) -> dict[str, Any]:
    return {
        "files": runs[0].files,
        "jobs": len(runs[0].jobs),
        "seconds": spread([r.seconds for r in runs], 2),
        "files_per_s": spread([r.files / r.seconds for r in runs]),
        "cpu_us_per_file": {
            family: spread([r.cpu_us.get(family, 0.0) for r in runs], 0)
            for family in sorted({name for r in runs for name in r.cpu_us})
        },
    }


def compare(
    session: Session, names: tuple[str, str], batches: tuple[list[list[TestFile]], ...]
) -> dict[str, Any]:
    """Both sides once per rep (the order swaps every rep, against drift); ratio = 2nd ÷ 1st."""
    runs: tuple[list[Timed], list[Timed]] = ([], [])
    for rep in range(session.run.reps):
        for side in (0, 1) if rep % 2 == 0 else (1, 0):
            runs[side].append(timed(session, batches[side]))
    ratios = [(b.files / b.seconds) / (a.files / a.seconds) for a, b in zip(*runs, strict=True)]
    return {names[0]: _side(runs[0]), names[1]: _side(runs[1]), "ratio": spread(ratios, 3)}


def flat(session: Session, params: dict[str, int]) -> dict[str, Any]:
    small = session.files[: params["small_job"]]
    large = session.files[: params["large_job"]]
    result = compare(session, ("small_job", "large_job"), ([small], [large]))
    return {**result, "ratio_meaning": "large_job files/s ÷ small_job files/s", "target": 0.85}


def concurrent(session: Session, params: dict[str, int]) -> dict[str, Any]:
    per_job, count = params["files_per_job"], params["jobs"]
    many = [session.files[i * per_job : (i + 1) * per_job] for i in range(count)]
    single = [session.files[: params["single_job"]]]
    result = compare(session, ("single_job", "concurrent_jobs"), (single, many))
    meaning = f"files/s of {count} jobs of {per_job} ÷ of one {params['single_job']}-file job"
    return {**result, "ratio_meaning": meaning, "target": 1.0}


def measure(run: Run) -> dict[str, Any]:
    scenario, params = run.extra["scenario"], run.extra["params"]
    measures = {"flat": flat, "concurrent": concurrent, "pollers": pollers}
    session = open_session(run)
    try:
        result = measures[scenario](session, params)
    finally:
        session.stack.stop()
        shutil.rmtree(run.out_dir, ignore_errors=True)
    return {
        "scenario": scenario,
        "system": "downlink",
        "params": params,
        "reps": run.reps,
        **result,
        "config": "downlink stack as in downlink_runner; 1 KiB files; "
        f"driver status GET every {POLL_S} s, one job at a time",
        "downlink_src": run.extra["downlink_src"],
    }


if __name__ == "__main__":
    print(json.dumps(measure(Run.from_argv())))
