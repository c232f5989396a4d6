"""STYLE rule 6: handlers and their mechanics import no framework and no Redis client.

One check for every worker service, on the source (imports anywhere in a module, under
TYPE_CHECKING too) and on what actually loads when the module is imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = {"faststream", "litestar", "redis"}
ROOT = Path(__file__).resolve().parents[1]

PLAIN_MODULES = [
    ("downloader", "handlers"),
    ("processor", "handlers"),
    ("processor", "tasks"),
    ("processor", "rasters"),
    ("processor", "sniff"),
    ("processor", "staging"),
    ("processor", "pool"),
    ("exporter", "handlers"),
    ("exporter", "archive"),
    ("exporter", "manifest"),
    ("exporter", "stac"),
]
# What a process loads to run the work: the downloader's and exporter's handlers, and the
# processor's tasks (all a spawned pool worker imports).
ENTRY_MODULES = [
    "services.downloader.handlers",
    "services.processor.tasks",
    "services.exporter.handlers",
]


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_check_sees_imports_anywhere_in_a_module() -> None:
    source = (
        "if TYPE_CHECKING:\n    from redis.asyncio import Redis\ndef f():\n    import litestar\n"
    )
    assert imported_roots(source) >= {"redis", "litestar"}


@pytest.mark.parametrize(("service", "module"), PLAIN_MODULES)
def test_module_imports_no_framework_or_redis(service: str, module: str) -> None:
    source = (ROOT / "services" / service / f"{module}.py").read_text()
    assert imported_roots(source) & FORBIDDEN == set()


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_importing_it_loads_no_framework_or_redis(module: str) -> None:
    code = (
        f"import sys, {module}\n"
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
