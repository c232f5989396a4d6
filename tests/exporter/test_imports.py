"""STYLE rule 6: the exporter's handlers and mechanics import no framework and no Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.downloader.test_imports import FORBIDDEN, imported_roots

MODULES = ["handlers", "archive", "manifest", "stac"]
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("module", MODULES)
def test_exporter_module_imports_no_framework_or_redis(module: str) -> None:
    source = (ROOT / "services" / "exporter" / f"{module}.py").read_text()
    assert imported_roots(source) & FORBIDDEN == set()


def test_importing_the_handlers_loads_no_framework_or_redis() -> None:
    code = (
        "import sys, services.exporter.handlers\n"
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
