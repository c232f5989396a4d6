"""The workloads every system runs, and the test files behind them (made once, then reused).

Stdlib only: every venv of the bench (peers, arq, Downlink's own) imports this module.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Workload:
    """N files of one size, served from one folder of the file server."""

    name: str
    count: int
    size_bytes: int
    folder: str

    @property
    def mib(self) -> float:
        return self.count * self.size_bytes / MIB

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Workload:
        return cls(**data)  # type: ignore[arg-type]


# The four workloads; `--quick` shrinks each so a smoke run takes a few minutes.
FULL = {
    "tiny5k": Workload("tiny5k", 5_000, KIB, "tiny"),
    "tiny10k": Workload("tiny10k", 10_000, KIB, "tiny"),
    "small": Workload("small", 2_000, 256 * KIB, "s256k"),
    "large": Workload("large", 1, GIB, "big"),
}
QUICK = {
    "tiny5k": Workload("tiny5k", 200, KIB, "tiny"),
    "tiny10k": Workload("tiny10k", 400, KIB, "tiny"),
    "small": Workload("small", 100, 256 * KIB, "s256k"),
    "large": Workload("large", 1, 64 * MIB, "big-quick"),
}
WARMUP = Workload("warmup", 200, KIB, "tiny")


@dataclass(frozen=True)
class TestFile:
    """One served file: where to GET it, and what a correct download hashes to."""

    url: str
    sha256: str
    size_bytes: int


def make_files(workload: Workload, www: Path, base_url: str) -> list[TestFile]:
    """Create (once) the workload's random files under `www`; return them with their SHA-256."""
    folder = www / workload.folder
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(workload.count):
        path = folder / f"f{index:05d}.bin"
        if not path.exists() or path.stat().st_size != workload.size_bytes:
            _write_random(path, workload.size_bytes)
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        url = f"{base_url}/{workload.folder}/{path.name}"
        files.append(TestFile(url, digest, workload.size_bytes))
    return files


def _write_random(path: Path, size: int) -> None:
    part = path.with_suffix(".part")
    with part.open("wb") as handle:
        left = size
        while left:
            chunk = min(left, 16 * MIB)
            handle.write(os.urandom(chunk))
            left -= chunk
    part.replace(path)


def warm_page_cache(workload: Workload, www: Path) -> None:
    """Read the workload's files so every system starts from the same (cached) source."""
    for path in sorted((www / workload.folder).glob("f*.bin"))[: workload.count]:
        with path.open("rb") as handle:
            while handle.read(16 * MIB):
                pass


# Downlink-only scenarios (`--scenarios`), all on the 1 KiB files of `tiny`: the targets
# compare Downlink with itself (a bigger job, more jobs, busy pollers), not with the peers.
SCENARIOS_FULL: dict[str, dict[str, int]] = {
    "flat": {"small_job": 1_000, "large_job": 10_000},
    "concurrent": {"jobs": 20, "files_per_job": 250, "single_job": 5_000},
    "pollers": {"files": 10_000, "pollers": 50},
}
SCENARIOS_QUICK: dict[str, dict[str, int]] = {
    "flat": {"small_job": 100, "large_job": 1_000},
    "concurrent": {"jobs": 20, "files_per_job": 25, "single_job": 500},
    "pollers": {"files": 1_000, "pollers": 50},
}


def scenario_counts(name: str, params: dict[str, int]) -> list[int]:
    """The file count of each timed run in one rep of a scenario."""
    if name == "flat":
        return [params["small_job"], params["large_job"]]
    if name == "concurrent":
        return [params["jobs"] * params["files_per_job"], params["single_job"]]
    return [params["files"], params["files"]]  # pollers: alone, then polled
