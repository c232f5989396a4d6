"""The tasks bench's sample module is what `downlink worker --tasks sample_tasks` can run."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.tasks.registry import load_tasks

BENCH_TASKS = Path(__file__).resolve().parents[1] / "bench" / "tasks"


async def test_the_worker_loads_the_bench_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH_TASKS))  # as the bench's PYTHONPATH does

    tasks = load_tasks(["sample_tasks"], queue="bench")

    assert sorted(tasks) == ["bench.noop", "bench.sleep"]
    assert await tasks["bench.noop"]() is None
    assert await tasks["bench.sleep"](ms=1) is None
