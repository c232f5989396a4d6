"""`downlink tasks enqueue | status | list | cancel | types`: your own tasks from the shell.

Built on downlink.SyncClient; tables for people, `--json` for scripts (one JSON document on
stdout, the API's own shape). The exit status is 0 on success, 1 when the API refused, the
gateway could not be reached, or a waited-for task did not complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from downlink import SyncClient
    from downlink.client.models import Task, TaskType

Command = Callable[["SyncClient", argparse.Namespace], int]
console = Console()


def add_task_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `downlink tasks ...` on the `downlink` parser."""
    tasks = commands.add_parser("tasks", help="enqueue and follow your own tasks (@downlink.task)")
    actions = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    enqueue = actions.add_parser("enqueue", help="queue a task")
    enqueue.add_argument("name", help="the task's registered name")
    enqueue.add_argument(
        "pairs", nargs="*", metavar="K=V", help="arguments, as --arg takes them (image_id=7)"
    )
    enqueue.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="K=V",
        help="an argument; V is read as JSON when it parses (7, true, [1]), else as text",
    )
    enqueue.add_argument("--json-args", metavar="JSON", help="arguments as one JSON object")
    enqueue.add_argument("--priority", type=int, help="1 (lowest) to 10 (highest)")
    enqueue.add_argument("--defer", type=float, metavar="S", help="run it S seconds from now")
    enqueue.add_argument("--wait", action="store_true", help="wait for its result")
    enqueue.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S")
    status = actions.add_parser("status", help="show a task")
    status.add_argument("task_id")
    listing = actions.add_parser("list", help="list your tasks, newest first")
    listing.add_argument("--task", help="only tasks of this name")
    listing.add_argument("--status", help="pending, running, completed, failed, cancelled, dead")
    listing.add_argument("--page", type=int, default=1)
    cancel = actions.add_parser("cancel", help="cancel a task that has not ended")
    cancel.add_argument("task_id")
    types = actions.add_parser("types", help="the tasks live workers can run")
    for parser in (enqueue, status, listing, cancel, types):
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument(
            "--url",
            default=os.environ.get("DOWNLINK_URL") or os.environ.get("DOWNLINK_API_URL"),
            help="gateway URL (DOWNLINK_URL; default http://127.0.0.1:8000)",
        )
        parser.add_argument(
            "--token", default=os.environ.get("DOWNLINK_TOKEN"), help="API token (DOWNLINK_TOKEN)"
        )
        parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: `downlink token create` and the services need none of the client.
    from downlink import DownlinkError, SyncClient

    try:
        with SyncClient(args.url, args.token) as dl:
            return _COMMANDS[args.tasks_command](dl, args)
    except (DownlinkError, TimeoutError, ValueError) as exc:
        print(f"downlink: {exc}", file=sys.stderr)
        return 1


def parse_arguments(pairs: list[str], json_args: str | None) -> dict[str, Any]:
    """`--json-args` then each `--arg K=V` over it; ValueError names a malformed one."""
    args: dict[str, Any] = {}
    if json_args:
        try:
            args = json.loads(json_args)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--json-args: not JSON: {exc}") from None
        if not isinstance(args, dict):
            raise ValueError("--json-args: give a JSON object ({...})")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--arg {pair!r}: expected K=V")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def _enqueue(dl: SyncClient, args: argparse.Namespace) -> int:
    from downlink import TaskCancelledError, TaskFailedError

    handle = dl.enqueue(
        args.name,
        _priority=args.priority,
        _defer_s=args.defer,
        **parse_arguments([*args.pairs, *args.arg], args.json_args),
    )
    if not args.wait:
        return _print(
            args,
            handle.enqueued,
            f"task {handle.task_id} queued (position {handle.queue_position})",
        )
    # A failed or cancelled task is no error of the command: its record, below, says how it ended.
    waiting = f"task {handle.task_id} queued, waiting for it"
    with (
        contextlib.nullcontext() if args.json else console.status(waiting),
        contextlib.suppress(TaskFailedError, TaskCancelledError),
    ):
        handle.result(timeout=args.timeout)
    task = handle.status()
    if args.json:
        _print_json(task)
    else:
        _show_task(task)
    return 0 if task.status == "completed" else 1


def _status(dl: SyncClient, args: argparse.Namespace) -> int:
    task = dl.get_task(args.task_id)
    if args.json:
        _print_json(task)
    else:
        _show_task(task)
    return 0


def _list(dl: SyncClient, args: argparse.Namespace) -> int:
    page = dl.tasks(task=args.task, status=args.status, page=args.page)
    if args.json:
        _print_json(page)
        return 0
    table = Table(title=f"page {page.page}: {len(page.tasks)} of {page.total} task(s)")
    table.add_column("task id", no_wrap=True, min_width=36)  # whole: people copy it
    for heading in ("task", "status", "tries", "created", "finished"):
        table.add_column(heading)
    for task in page.tasks:
        finished = task.finished_at.isoformat(timespec="seconds") if task.finished_at else ""
        table.add_row(
            task.task_id,
            task.task,
            task.status,
            str(task.attempts),
            task.created_at.isoformat(timespec="seconds"),
            finished,
        )
    console.print(table)
    return 0


def _cancel(dl: SyncClient, args: argparse.Namespace) -> int:
    cancelled = dl.cancel_task(args.task_id)
    return _print(args, cancelled, f"task {cancelled.task_id} {cancelled.status}")


def _types(dl: SyncClient, args: argparse.Namespace) -> int:
    types = dl.task_types()
    if args.json:
        _print_json(types)
        return 0
    table = Table("task", "queue", "arguments", "tries", "timeout")
    for registered in types:
        table.add_row(
            registered.name,
            registered.queue,
            _signature(registered),
            str(registered.policy.get("max_tries", "")),
            str(registered.policy.get("timeout_s") or ""),
        )
    console.print(table)
    return 0


def _signature(registered: TaskType) -> str:
    """`image_id: integer, size?: integer`: the arguments, `?` on the optional ones."""
    schema = registered.args_schema
    # Workers describe the arguments as one object in `$defs`, named by the top-level `$ref`.
    name = str(schema.get("$ref", "")).removeprefix("#/$defs/")
    arguments = schema.get("$defs", {}).get(name, schema)
    required = set(arguments.get("required", []))
    return ", ".join(
        f"{argument}{'' if argument in required else '?'}: {_kind(spec)}"
        for argument, spec in arguments.get("properties", {}).items()
    )


def _kind(spec: dict[str, Any]) -> str:
    if "enum" in spec:
        return " | ".join(json.dumps(value) for value in spec["enum"])
    if "anyOf" in spec:
        return " | ".join(_kind(option) for option in spec["anyOf"])
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[-1]
    kind = spec.get("type", "any")
    return " | ".join(kind) if isinstance(kind, list) else str(kind)


def _show_task(task: Task) -> None:
    table = Table(show_header=False, box=None, title=f"task {task.task_id}")
    rows = {
        "task": f"{task.task} (queue {task.queue}, priority {task.priority})",
        "status": task.status,
        "tries": str(task.attempts),
        "worker": task.worker or "",
        "progress": _progress(task),
        "result": "" if task.result is None else json.dumps(task.result),
        "trace id": task.trace_id or "",
    }
    for name, value in rows.items():
        if value:
            table.add_row(name, value)
    console.print(table)
    if task.error:
        console.print(task.error, style="red", highlight=False, markup=False)


def _progress(task: Task) -> str:
    if task.progress is None:
        return ""
    total = "" if task.progress.total is None else f"/{task.progress.total:g}"
    return f"{task.progress.done:g}{total} {task.progress.message}".strip()


def _print(args: argparse.Namespace, value: object, line: str) -> int:
    if args.json:
        _print_json(value)
    else:
        console.print(line, highlight=False)
    return 0


def _print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


_COMMANDS: dict[str, Command] = {
    "enqueue": _enqueue,
    "status": _status,
    "list": _list,
    "cancel": _cancel,
    "types": _types,
}
