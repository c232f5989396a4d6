"""The task workloads every system runs, and the names their tasks share.

Stdlib only: every venv of the bench imports this module, and so does Downlink's task worker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

QUEUE = "bench"
NOOP, SLEEP = "bench.noop", "bench.sleep"
# PostgreSQL connections a peer's worker records with: at 256 slots, one per slot would pass
# the server's max_connections (100 by default).
DB_POOL = 16


@dataclass(frozen=True)
class TaskWorkload:
    """N tasks of one kind, run by one worker process with `slots` tasks at a time."""

    name: str
    count: int
    sleep_ms: float  # 0: the no-op task
    slots: int

    @property
    def task(self) -> str:
        return SLEEP if self.sleep_ms else NOOP

    @property
    def args(self) -> dict[str, Any]:
        return {"ms": self.sleep_ms} if self.sleep_ms else {}

    def utilisation_pct(self, seconds: float) -> float:
        """Share of the slots' time spent sleeping: N x sleep / (slots x seconds)."""
        return self.count * self.sleep_ms / 1e3 / (self.slots * seconds) * 100

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskWorkload:
        return cls(**data)


# The three; `--quick` shrinks each so a smoke run takes a few minutes.
FULL = {
    "noop": TaskWorkload("noop", 5_000, 0, 64),
    "sleep10": TaskWorkload("sleep10", 2_000, 10, 64),
    "slots256": TaskWorkload("slots256", 2_560, 100, 256),
}
QUICK = {
    "noop": TaskWorkload("noop", 500, 0, 64),
    "sleep10": TaskWorkload("sleep10", 200, 10, 64),
    "slots256": TaskWorkload("slots256", 512, 100, 256),
}
