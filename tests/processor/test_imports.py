"""STYLE rule 6: the processor's handlers and tasks import no framework and no Redis client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import services.processor.handlers as handlers
from tests.downloader.test_imports import FORBIDDEN, imported_roots

ROOT = Path(handlers.__file__).parents[2]


@pytest.mark.parametrize("module", ["handlers", "tasks", "rasters", "sniff", "staging", "pool"])
def test_module_imports_no_framework_or_redis(module: str) -> None:
    source = (ROOT / "services" / "processor" / f"{module}.py").read_text()
    assert imported_roots(source) & FORBIDDEN == set()


def test_a_pool_worker_loads_no_framework_or_redis() -> None:
    # What a spawned worker imports to run a task: tasks.py and its helpers.
    code = (
        "import sys, services.processor.tasks\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'faststream','litestar','redis'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
