"""Export speed: Downlink's exporter against the `zip` and `tar` commands on the same files.

One GiB of files (by default) is written once: half imagery-like noise (.tif, incompressible,
stored as is in a zip), half CSV tables (deflated). Each contender then archives them, in its
own process so its peak RSS is its own (from wait4's rusage):
  - Downlink zip and tar.gz: `build_export` (services/exporter/handlers.py) with local storage,
    exactly as the exporter service runs it, metadata (manifest, SHA256SUMS, STAC) included;
  - `zip -q -r -n .tif` (the same stored-versus-deflated choice) and `tar -czf` (gzip -6).
The files are read once before timing, so every contender reads from the page cache. Downlink
also hashes every source and the archive with SHA-256, which zip and tar do not. Prints JSON.

    .venv/bin/python bench/bench_export.py [--total-mib 1024] [--files 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.exporter.handlers import ExportDeps, ExportLimits, build_export
from shared.events import BuildExport, ExportItem, ExportReady
from shared.ids import JobId, UserId
from shared.storage.local import LocalStorage

MIB = 1024 * 1024
USER = "bench-user"
JOB = "bench-job"


# --- the data set ---------------------------------------------------------------------------


def _csv_block(seed: int) -> bytes:
    rng = random.Random(seed)
    lines = []
    size = 0
    while size < MIB:
        line = (
            f"S2A_{rng.randrange(10**6):06d},{rng.uniform(-180, 180):.6f},"
            f"{rng.uniform(-90, 90):.6f},{rng.randrange(10000)},{rng.random():.4f},"
            f"B0{rng.randrange(9)}\n"
        )
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:MIB]


def make_files(root: Path, total_mib: int, count: int) -> list[dict[str, Any]]:
    """Write the data set under `root/<user>/<job>/` and describe each file (with its SHA-256)."""
    folder = root / USER / JOB
    folder.mkdir(parents=True)
    per_file_mib = max(1, total_mib // count)
    blocks = [_csv_block(seed) for seed in range(4)]
    items = []
    for index in range(count):
        suffix = ".tif" if index % 2 == 0 else ".csv"
        name = f"file-{index:03d}{suffix}"
        digest = hashlib.sha256()
        with (folder / name).open("wb") as out:
            for block_index in range(per_file_mib):
                block = os.urandom(MIB) if suffix == ".tif" else blocks[(index + block_index) % 4]
                out.write(block)
                digest.update(block)
        items.append({"name": name, "size": per_file_mib * MIB, "sha256": digest.hexdigest()})
    return items


# --- contenders, each run in a child process ------------------------------------------------


class _NullPublisher:
    async def publish(self, event: object) -> None:
        del event


class _MemoryCompletions:
    async def get(self, export_id: str) -> ExportReady | None:
        del export_id
        return None

    async def put(self, event: ExportReady) -> None:
        del event


class _NeverCancelled:
    async def is_cancelled(self, export_id: str) -> bool:
        del export_id
        return False

    @contextlib.asynccontextmanager
    async def watch(self, export_id: str) -> AsyncIterator[threading.Event]:
        del export_id
        yield threading.Event()


def downlink_child(root: Path, items_file: Path, archive_format: str) -> dict[str, Any]:
    """Build one export as the exporter does; runs in its own process (`--child`)."""
    described = json.loads(items_file.read_text())
    command = BuildExport(
        export_id=f"bench-{archive_format.replace('.', '')}",
        user_id=UserId(USER),
        format="zip" if archive_format == "zip" else "tar.gz",
        include_metadata=True,
        items=tuple(
            ExportItem(
                file_id=f"file-{index}",
                job_id=JobId(JOB),
                filepath=f"{USER}/{JOB}/{item['name']}",
                arcname=f"{JOB}/{item['name']}",
                size=item["size"],
                sha256=item["sha256"],
                url=f"https://example.com/{item['name']}",
            )
            for index, item in enumerate(described)
        ),
        jobs=({"job_id": JOB, "status": "completed"},),
    )
    deps = ExportDeps(
        storage=LocalStorage(root),
        publisher=_NullPublisher(),
        completions=_MemoryCompletions(),
        cancellations=_NeverCancelled(),
        limits=ExportLimits(max_size_bytes=1 << 50, progress_interval_s=1.0),
        worker="bench",
    )
    started = time.perf_counter()
    ready = asyncio.run(build_export(command, deps, attempt=1))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "archive_bytes": ready.size, "path": str(root / ready.filepath)}


def _vm_hwm(pid: int) -> int:
    """The peak RSS of one live process in bytes (VmHWM), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _descendants(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    except OSError:
        pass
    return found


def _run(argv: list[str], cwd: Path | None = None) -> tuple[float, int, str]:
    """Run `argv`; wall seconds, the peak RSS of its process tree in bytes and its stdout.

    Peaks are read from /proc (VmHWM) while it runs: a forked child's rusage would count the
    pages this (much larger) benchmark process had when it forked, not the child's own.
    """
    peaks: dict[int, int] = {}
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err)
        while process.poll() is None:
            for pid in (process.pid, *_descendants(process.pid)):
                peaks[pid] = max(peaks.get(pid, 0), _vm_hwm(pid))
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{argv[0]} failed ({process.returncode}): {err.read().decode()}")
        out.seek(0)
        return seconds, sum(peaks.values()), out.read().decode()


def run_downlink(root: Path, items_file: Path, archive_format: str) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", str(root), str(items_file), archive_format]
    _, peak_rss, stdout = _run(argv)
    result: dict[str, Any] = json.loads(stdout)
    Path(result.pop("path")).unlink()
    return {**result, "peak_rss_bytes": peak_rss}


def run_zip(root: Path, work: Path) -> dict[str, Any] | None:
    if shutil.which("zip") is None:
        return None
    archive = work / "tool.zip"
    stored = ":".join([".tif", ".tiff", ".jp2", ".png", ".jpg", ".zip", ".gz"])
    seconds, peak_rss, _ = _run(["zip", "-q", "-r", "-n", stored, str(archive), JOB], root / USER)
    size = archive.stat().st_size
    archive.unlink()
    return {"seconds": seconds, "archive_bytes": size, "peak_rss_bytes": peak_rss}


def run_tar(root: Path, work: Path) -> dict[str, Any] | None:
    if shutil.which("tar") is None or shutil.which("gzip") is None:
        return None
    archive = work / "tool.tar.gz"
    seconds, peak_rss, _ = _run(["tar", "-czf", str(archive), "-C", str(root / USER), JOB])
    size = archive.stat().st_size
    archive.unlink()
    # tar runs gzip as its child: the peak counts both.
    return {"seconds": seconds, "archive_bytes": size, "peak_rss_bytes": peak_rss}


# --- the report -----------------------------------------------------------------------------


def _summary(result: dict[str, Any] | None, source_bytes: int) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "seconds": round(result["seconds"], 3),
        "mb_per_s": round(source_bytes / result["seconds"] / 1e6, 1),
        "archive_bytes": result["archive_bytes"],
        "compression_ratio": round(result["archive_bytes"] / source_bytes, 3),
        "peak_rss_mib": round(result["peak_rss_bytes"] / MIB, 1),  # the process tree's
    }


def _versus(ours: dict[str, Any] | None, tool: dict[str, Any] | None) -> float | None:
    """Downlink's throughput over the tool's: above 1 means Downlink is faster."""
    if ours is None or tool is None:
        return None
    return round(ours["mb_per_s"] / tool["mb_per_s"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument(
        "--child", nargs=3, metavar=("ROOT", "ITEMS", "FORMAT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        root, items_file, archive_format = args.child
        print(json.dumps(downlink_child(Path(root), Path(items_file), archive_format)))
        return

    work = Path(tempfile.mkdtemp(prefix="downlink-bench-export-"))
    try:
        root = work / "storage"
        items = make_files(root, args.total_mib, args.files)
        source_bytes = sum(item["size"] for item in items)
        items_file = work / "items.json"
        items_file.write_text(json.dumps(items))
        for path in (root / USER / JOB).iterdir():  # warm the page cache for everyone alike
            with path.open("rb") as source:
                while source.read(16 * MIB):
                    pass
        results = {
            "downlink_zip": _summary(run_downlink(root, items_file, "zip"), source_bytes),
            "zip_command": _summary(run_zip(root, work), source_bytes),
            "downlink_tar_gz": _summary(run_downlink(root, items_file, "tar.gz"), source_bytes),
            "tar_command": _summary(run_tar(root, work), source_bytes),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "export",
        "files": len(items),
        "source_bytes": source_bytes,
        "mix": "half .tif noise (stored in zip), half .csv text (deflated)",
        "cpus": os.cpu_count(),
        "results": results,
        "speed_vs_zip": _versus(results["downlink_zip"], results["zip_command"]),
        "speed_vs_tar": _versus(results["downlink_tar_gz"], results["tar_command"]),
        "notes": (
            "speed_vs_* is Downlink's MB/s over the command's (>1: faster); Downlink also "
            "SHA-256s every source and the archive and writes manifest, SHA256SUMS and STAC"
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
