"""STYLE rule 6: handlers are plain async functions, with no framework or Redis imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import services.downloader.handlers as handlers

FORBIDDEN = {"faststream", "litestar", "redis"}


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


def test_handlers_import_no_framework_or_redis() -> None:
    source = Path(handlers.__file__).read_text()
    assert imported_roots(source) & FORBIDDEN == set()


def test_importing_handlers_loads_no_framework_or_redis() -> None:
    code = (
        "import sys, services.downloader.handlers\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'faststream','litestar','redis'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(handlers.__file__).parents[2],
        timeout=60,
    )
    assert result.stdout.strip() == "[]"
