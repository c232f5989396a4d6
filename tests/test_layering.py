"""Layering rules: handlers and their mechanics import no framework and no Redis client (STYLE
rule 6), a worker's app.py is wiring over shared.runner, `downlink token create` loads no
aiohttp, and only shared/storage knows the filesystem behind storage keys (DESIGN).

One check for every worker service, on the source (imports anywhere in a module, under
TYPE_CHECKING too) and on what actually loads when the module is imported.
"""

from __future__ import annotations

import ast
import os
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
    ("exporter", "handlers"),
    ("exporter", "archive"),
    ("exporter", "manifest"),
    ("exporter", "stac"),
    ("tasks", "handlers"),
    ("tasks", "definitions"),
    ("tasks", "context"),
]
# What a process loads to run the work: the downloader's and exporter's handlers, and the
# processor's tasks (all a spawned pool worker imports).
ENTRY_MODULES = [
    "services.downloader.handlers",
    "services.processor.tasks",
    "services.exporter.handlers",
    "services.tasks.handlers",
    # The process pool the processor and CPU tasks share (its spawned children import it).
    "shared.process_pool",
    # What user code imports to declare its tasks.
    "downlink",
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


def run_python(code: str, **env: str) -> str:
    """What `python -c code` prints, run from the repository in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    )
    return result.stdout.strip()


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_importing_it_loads_no_framework_or_redis(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'faststream','litestar','redis'}))"
    )
    assert run_python(code) == "[]"


WORKER_SERVICES = ("downloader", "processor", "exporter", "tasks")
# The skeleton every worker shares lives in shared.runner: an app.py reaching for these is
# building its own copy again (Redis, broker, tracer, registry, trimming, leases, consumer).
SKELETON = {
    "shared.broker",
    "shared.redis_client",
    "shared.telemetry",
    "shared.workers",
    "shared.trim",
    "shared.reclaim",
    "shared.consumer.StreamConsumer",
}
# What wiring may import beyond shared.* and its own service (annotations only).
WIRING_STDLIB = {"__future__", "typing"}


def imported_names(source: str) -> set[str]:
    """Every module imported, and every `module.name` taken from one."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_wiring_check_sees_what_a_skeleton_imports() -> None:
    source = "import signal\nimport aiohttp\nfrom shared.consumer import StreamConsumer\n"
    assert imported_names(source) >= {"signal", "aiohttp", "shared.consumer.StreamConsumer"}


@pytest.mark.parametrize("service", WORKER_SERVICES)
def test_a_worker_app_is_wiring_over_the_one_runner(service: str) -> None:
    names = imported_names((ROOT / "services" / service / "app.py").read_text())
    own = ("shared.", f"services.{service}.")
    assert "shared.runner.run_worker" in names
    outside = {n for n in names if not n.startswith(own) and n.split(".")[0] not in WIRING_STDLIB}
    assert outside == set()
    assert names & SKELETON == set()


def test_token_create_loads_no_aiohttp_or_faststream(database_url: str) -> None:
    # The whole command, as `downlink token create` runs it, then what it loaded.
    code = (
        "import sys\n"
        "from services.cli import main\n"
        "status = main(['token', 'create', 'layering-check'])\n"
        "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'faststream'}))"
    )
    token, loaded = run_python(code, DOWNLINK_DATABASE_URL=database_url).splitlines()
    assert token.startswith("dl_")
    assert loaded == "0 []"


# How code outside shared/storage would resolve or refuse links itself, instead of going
# through the one check storage owns (`Storage.open_verified`).
FILESYSTEM_CHECKS = ("os.path.realpath", "O_NOFOLLOW")


def _modules_outside_storage() -> list[Path]:
    storage = ROOT / "shared" / "storage"
    return [
        path
        for folder in ("shared", "services", "downlink")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if not path.is_relative_to(storage)
    ]


def test_the_scan_covers_the_services() -> None:
    scanned = _modules_outside_storage()
    assert ROOT / "services" / "gateway" / "jobs" / "controller.py" in scanned
    assert ROOT / "services" / "exporter" / "handlers.py" in scanned
    assert ROOT / "shared" / "storage" / "local.py" not in scanned


def test_only_shared_storage_checks_links_on_the_filesystem() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {check}"
        for path in _modules_outside_storage()
        for check in FILESYSTEM_CHECKS
        if check in path.read_text()
    ]
    assert offenders == []


# The gateway's record side: its SQL, the projections, the job lifecycle, the outbox and the
# background loops. None of it may reach for an HTTP body: queries return records, and the
# controllers map those onto their response Structs.
RECORD_SIDE = [
    "services.gateway.outbox",
    "services.gateway.projection",
    "services.gateway.reconciler",
    "services.gateway.tracker",
    "services.gateway.jobs.commands",
    "services.gateway.jobs.lifecycle",
    "services.gateway.jobs.projection",
    "services.gateway.jobs.queries",
    "services.gateway.jobs.records",
    "services.gateway.jobs.submit",
    "services.gateway.processing.commands",
    "services.gateway.processing.projection",
    "services.gateway.processing.queries",
    "services.gateway.processing.queueing",
    "services.gateway.processing.records",
    "services.gateway.exports.automatic",
    "services.gateway.exports.commands",
    "services.gateway.exports.projection",
    "services.gateway.exports.queries",
    "services.gateway.exports.insertion",
    "services.gateway.exports.records",
    "services.gateway.exports.selection",
    "services.gateway.executions.history",
    "services.gateway.executions.queries",
    "services.gateway.executions.tries",
    "services.gateway.dead_letters.queries",
    "shared.task_types",
    "shared.task_catalogue",
    "services.gateway.tasks.commands",
    "services.gateway.tasks.errors",
    "services.gateway.tasks.projection",
    "services.gateway.tasks.queries",
    "services.gateway.tasks.enqueueing",
    "services.gateway.tasks.records",
    "shared.workflows",
    "services.gateway.workflows.artifacts",
    "services.gateway.workflows.cancellation",
    "services.gateway.workflows.engine",
    "services.gateway.workflows.errors",
    "services.gateway.workflows.exports",
    "services.gateway.workflows.jobs",
    "services.gateway.workflows.launch",
    "services.gateway.workflows.queries",
    "services.gateway.workflows.records",
    "services.gateway.workflows.steps",
    "services.gateway.workflows.submission",
]


def _is_http_side(name: str) -> bool:
    """A gateway module of HTTP bodies (an area's schemas, the shared error answers), or the
    framework that serves them."""
    if name.split(".", maxsplit=1)[0] == "litestar":
        return True
    return name.startswith("services.gateway.") and (
        name.endswith(".schemas") or ".schemas." in name or name == "services.gateway.responses"
    )


def _source(module: str) -> str:
    return (ROOT / (module.replace(".", "/") + ".py")).read_text()


def test_the_http_check_knows_a_schemas_module() -> None:
    names = imported_names("from services.gateway.jobs.schemas import JobStatusResponse\n")
    assert any(_is_http_side(name) for name in names)
    assert not _is_http_side("services.gateway.jobs.records")


@pytest.mark.parametrize("module", RECORD_SIDE)
def test_the_record_side_imports_no_http_schemas(module: str) -> None:
    assert {name for name in imported_names(_source(module)) if _is_http_side(name)} == set()


def test_importing_the_record_side_loads_no_http_schemas() -> None:
    code = (
        f"import sys\nfor name in {RECORD_SIDE!r}:\n    __import__(name)\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = run_python(code).splitlines()
    assert [name for name in loaded if _is_http_side(name)] == []


def test_the_reconciler_does_not_import_the_tracker() -> None:
    # A timed-out job ends by the job lifecycle's rule, not through the tracker's projection.
    assert not any(
        name.startswith("services.gateway.tracker")
        for name in imported_names(_source("services.gateway.reconciler"))
    )
    code = (
        "import sys, services.gateway.reconciler\nprint('services.gateway.tracker' in sys.modules)"
    )
    assert run_python(code) == "False"
