"""The `downlink` command: run services, migrate, make tokens, and a client for people."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.settings import Settings
from shared.telemetry import setup_logging

ServiceMain = Callable[[Settings], Coroutine[Any, Any, None]]


def _load_env_file(path: str | None) -> None:
    """KEY=VALUE lines; variables already in the environment win."""
    if path is None:
        return
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        os.environ.setdefault(key.strip(), value.strip().strip("'\""))


def _settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    _load_env_file(getattr(args, "env_file", None))
    settings = Settings.from_env()
    changes = {name: value for name, value in overrides.items() if value is not None}
    if getattr(args, "log_level", None):
        changes["log_level"] = args.log_level.upper()
    return settings.replace(**changes) if changes else settings


def _service_main(service: str) -> ServiceMain:
    # Imported lazily: `downlink token create` must not pay for aiohttp, FastStream and the
    # other services' libraries (tests/test_layering.py checks what it loads).
    if service == "gateway":
        from services.gateway.app import serve as gateway

        return gateway
    if service == "downloader":
        from services.downloader.app import serve as downloader

        return downloader
    if service == "processor":
        from services.processor.app import serve as processor

        return processor
    from services.exporter.app import serve as exporter

    return exporter


def _run_service(args: argparse.Namespace) -> int:
    # `--concurrency` is each worker's own knob: parallel downloads, or pool processes.
    concurrency = getattr(args, "concurrency", None)
    settings = _settings(
        args,
        http_port=getattr(args, "port", None),
        http_host=getattr(args, "host", None),
        download_concurrency=concurrency if args.command == "downloader" else None,
        process_workers=concurrency if args.command == "processor" else None,
    )
    setup_logging(args.command, settings.log_level)
    import uvloop

    from shared.runner import BackgroundLoopCrashed

    try:
        # uvloop: ~15 % less CPU per Redis round trip than asyncio's loop (see ARCHITECTURE.md).
        uvloop.run(_service_main(args.command)(settings))
    except BackgroundLoopCrashed:
        # Logged already, naming the loop with its traceback; the exit status tells supervisors.
        return 1
    return 0


def _worker(args: argparse.Namespace) -> int:
    """`downlink worker --tasks MODULE ...`: run user-defined tasks of one queue."""
    settings = _settings(args)
    setup_logging("tasks", settings.log_level)
    # The current directory first, as `python -m` would: user modules live beside the project.
    sys.path.insert(0, os.getcwd())
    import uvloop

    from services.tasks.app import serve
    from shared.runner import BackgroundLoopCrashed

    try:
        uvloop.run(
            serve(
                settings,
                modules=args.tasks,
                queue=args.queue,
                max_jobs=args.max_jobs,
                job_timeout_s=args.job_timeout,
            )
        )
    except BackgroundLoopCrashed:
        return 1
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from services.gateway.migrations import migrate

    settings = _settings(args)
    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from services.gateway.auth import create_token
    from services.gateway.migrations import migrate
    from shared.postgres import open_pool

    settings = _settings(args)

    async def create() -> str:
        await migrate(settings.database_url)
        async with open_pool(settings.database_url, max_size=1) as pool:
            return await create_token(pool, args.name, admin=args.admin)

    token: str = asyncio.run(create())
    print(token)
    return 0


def _stack(args: argparse.Namespace) -> int:
    from services.stack import run_stack

    settings = _settings(args, http_port=args.port)
    return run_stack(settings, env_file=args.env_file)


def _client(args: argparse.Namespace) -> int:
    from services import client

    return client.run(args)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", metavar="FILE", help="read DOWNLINK_* variables from FILE")
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downlink", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser("migrate", help="apply the SQL migrations (idempotent)")
    _add_common(migrate)
    migrate.set_defaults(func=_migrate)

    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_commands.add_parser("create", help="create a user if needed and print a token")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="the user may use admin routes")
    _add_common(create)
    create.set_defaults(func=_token_create)

    gateway = commands.add_parser("gateway", help="run the HTTP gateway and the tracker")
    gateway.add_argument("--port", type=int)
    gateway.add_argument("--host")
    downloader = commands.add_parser("downloader", help="run a downloader")
    downloader.add_argument("--concurrency", type=int, help="parallel downloads in this process")
    processor = commands.add_parser("processor", help="run a processor")
    processor.add_argument(
        "--concurrency", type=int, help="worker processes in this processor's pool (default: cores)"
    )
    exporter = commands.add_parser("exporter", help="run an exporter")
    for service in (gateway, downloader, processor, exporter):
        _add_common(service)
        service.set_defaults(func=_run_service)

    worker = commands.add_parser("worker", help="run user-defined tasks (@downlink.task)")
    worker.add_argument(
        "--tasks",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module of @task functions (default: the downlink.tasks entry points installed)",
    )
    worker.add_argument(
        "--queue",
        "--queue-name",  # arq's spelling, so an arq worker's command line works unchanged
        dest="queue",
        default="default",
        help="the queue to run (default: default)",
    )
    worker.add_argument("--max-jobs", type=int, default=10, help="tasks run at once (default 10)")
    worker.add_argument(
        "--job-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="timeout of tasks that set none (default 300 s)",
    )
    _add_common(worker)
    worker.set_defaults(func=_worker)

    stack = commands.add_parser("stack", help="run every service under one supervisor")
    stack.add_argument("--port", type=int)
    _add_common(stack)
    stack.set_defaults(func=_stack)

    from services.cli_admin import add_admin_commands
    from services.cli_schedules import add_schedule_commands
    from services.cli_tasks import add_task_commands
    from services.cli_workflows import add_workflow_commands
    from services.client import add_client_commands

    add_client_commands(commands, _client)
    add_task_commands(commands)
    add_schedule_commands(commands)
    add_admin_commands(commands)
    add_workflow_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"downlink: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
