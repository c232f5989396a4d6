"""CPU seconds per process family over one measured run, read from /proc through psutil.

A family is a process tree we started (a worker, nginx, redis-server, Downlink's stack split by
service) or the PostgreSQL processes that work for the run's own database: its backends, plus
the server's shared background writers (those also serve other databases on a shared machine).
A process that appears during the run counts from zero; one that exits during the run loses what
it did (its parent's reaped-children times would also hold strangers' work, e.g. PostgreSQL's).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import psutil

# Beside the total, not in it: the file server is the same for every system, and the completion
# poll's own backend is the bench's way of watching, not the system's work.
BESIDE = frozenset({"nginx", "pg_poll"})
PG_SHARED = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "walsummarizer",
    "archiver",
)

Key = tuple[int, float]  # pid and start time: a reused pid is another process


@dataclass
class Families:
    """Which processes to charge: trees by family name, and the run's PostgreSQL database."""

    trees: dict[str, int] = field(default_factory=dict)
    # A tree's children whose command line holds one of these words form `family.word`.
    split_words: dict[str, tuple[str, ...]] = field(default_factory=dict)
    database: str | None = None
    poll_backend_pid: int | None = None


def _cpu(process: psutil.Process, with_children: bool) -> float:
    times = process.cpu_times()
    total = times.user + times.system
    if with_children:
        total += times.children_user + times.children_system
    return total


def _walk(
    process: psutil.Process, label: str, words: tuple[str, ...], out: dict[Key, tuple[str, float]]
) -> None:
    try:
        cmdline = " ".join(process.cmdline())
        out[(process.pid, process.create_time())] = (label, _cpu(process, with_children=True))
        children = process.children()
    except psutil.Error:
        return
    for child in children:
        try:
            child_cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        word = next((w for w in words if w in child_cmd and w not in cmdline), None)
        family = label.split(".", 1)[0]
        _walk(child, f"{family}.{word}" if word else label, words, out)


def _postgres(families: Families, out: dict[Key, tuple[str, float]]) -> None:
    for process in psutil.process_iter(["username", "cmdline"]):
        if process.info["username"] != "postgres":
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.pid == families.poll_backend_pid:
            family = "pg_poll"
        elif families.database and families.database in cmdline:
            family = "postgres"
        elif any(word in cmdline for word in PG_SHARED) or not cmdline.startswith("postgres:"):
            family = "postgres"  # shared background work, or the postmaster's own forking
        else:
            continue  # a backend of somebody else's database
        with contextlib.suppress(psutil.Error):
            out[(process.pid, process.create_time())] = (family, _cpu(process, with_children=False))


class Meter:
    """start() then stop(): CPU seconds per family, `driver` being this very process."""

    def __init__(self, families: Families) -> None:
        self.families = families
        self._start: dict[Key, tuple[str, float]] = {}
        self._driver_start = 0.0

    def scan(self) -> dict[Key, tuple[str, float]]:
        out: dict[Key, tuple[str, float]] = {}
        for name, pid in self.families.trees.items():
            try:
                root = psutil.Process(pid)
                root_cmd = " ".join(root.cmdline())
            except psutil.Error:
                continue
            words = self.families.split_words.get(name, ())
            word = next((w for w in words if w in root_cmd), None)
            _walk(root, f"{name}.{word}" if word else name, words, out)
        if self.families.database is not None:
            _postgres(self.families, out)
        return out

    def start(self) -> None:
        # The scans are read outside the driver's own window so they are not charged to it.
        self._start = self.scan()
        self._driver_start = time.process_time()

    def stop(self) -> dict[str, float]:
        driver = time.process_time() - self._driver_start
        end = self.scan()
        seconds: dict[str, float] = {"driver": driver}
        for key, (family, cpu) in end.items():
            before = self._start.get(key, (family, 0.0))[1]
            seconds[family] = seconds.get(family, 0.0) + max(0.0, cpu - before)
        return seconds


def per_file_us(seconds: dict[str, float], files: int) -> dict[str, float]:
    """µs per file per family, plus `total` over every family not in BESIDE."""
    us = {name: value / files * 1e6 for name, value in sorted(seconds.items())}
    us["total"] = sum(value for name, value in us.items() if name not in BESIDE)
    return us
