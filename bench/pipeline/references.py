"""curl and aria2c on the same files: what the transfer alone costs, with no queue or record.

Neither hashes while downloading nor writes a row; outputs are checked (size and SHA-256) after
the timed window. CPU: the tool's own (its rusage as our reaped child) and this driver's.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from meter import Families, Meter, per_file_us
from report import run_result
from workloads import TestFile, Workload, warm_page_cache

CONCURRENCY = 16


def _curl(files: list[TestFile], out: Path, listing: Path) -> list[str]:
    listing.write_text(
        "".join(f'url = "{f.url}"\noutput = "{out / str(i)}"\n' for i, f in enumerate(files))
    )
    return [
        "curl",
        "--silent",
        "--no-progress-meter",
        "--show-error",
        "--fail",
        "--parallel",
        "--parallel-max",
        str(CONCURRENCY),
        "--config",
        str(listing),
    ]


def _aria2c(files: list[TestFile], out: Path, listing: Path) -> list[str]:
    listing.write_text("".join(f"{f.url}\n  out={i}\n" for i, f in enumerate(files)))
    argv = [
        "aria2c",
        "--quiet",
        "--allow-overwrite=true",
        "--auto-file-renaming=false",
        "--file-allocation=none",
        "--dir",
        str(out),
        "--input-file",
        str(listing),
    ]
    if len(files) == 1:  # one big file: aria2c's strength is ranges over several connections
        return [*argv, "-x", "8", "-s", "8", "-k", "1M"]
    return [*argv, "-j", str(CONCURRENCY), "-x", "1"]


TOOLS = {
    "curl": (_curl, f"curl --parallel --parallel-max {CONCURRENCY} (one GET per file), to files"),
    "aria2c": (_aria2c, f"aria2c -j {CONCURRENCY} -x 1; one file: -x 8 -s 8 -k 1M (8 ranges)"),
}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _check(files: list[TestFile], out: Path) -> None:
    for index, f in enumerate(files):
        with (out / str(index)).open("rb") as handle:
            if hashlib.file_digest(handle, "sha256").hexdigest() != f.sha256:
                raise AssertionError(f"{out / str(index)} does not hash like {f.url}")


def measure(
    tool: str,
    workload: Workload,
    files: list[TestFile],
    www: Path,
    work: Path,
    nginx_pid: int,
    reps: int,
) -> dict[str, Any]:
    """Time `tool` fetching every file of the workload, `reps` times."""
    build, config = TOOLS[tool]
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is not installed: run bench/pipeline/setup.sh")
    meter = Meter(Families(trees={"nginx": nginx_pid}))
    out, listing = work / tool, work / f"{tool}.list"
    seconds, cpu = [], []
    for _ in range(reps):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        argv = build(files, out, listing)
        warm_page_cache(workload, www)
        os.sync()
        before = _children_cpu_s()
        meter.start()
        started = time.perf_counter()
        subprocess.run(argv, check=True, timeout=600)
        seconds.append(time.perf_counter() - started)
        used = meter.stop()
        used[tool] = _children_cpu_s() - before
        cpu.append(per_file_us(used, len(files)))
        _check(files, out)
    shutil.rmtree(out, ignore_errors=True)
    return run_result(tool, workload.to_json(), seconds, cpu, {"config": config})
