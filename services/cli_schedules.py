"""`downlink schedules list | create | show | pause | resume | delete | run` and `downlink purge`.

Built on downlink.SyncClient, like `downlink tasks`: tables for people, `--json` for scripts
(one JSON document on stdout, the API's own shape). The exit status is 0 on success, 1 when
the API refused or the gateway could not be reached (or a purge was not confirmed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from rich.console import Console
from rich.table import Table

from services.cli_tasks import parse_arguments

if TYPE_CHECKING:
    from datetime import datetime

    from downlink import SyncClient
    from downlink.client.models import Schedule

Command = Callable[["SyncClient", argparse.Namespace], int]
console = Console()


def add_schedule_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `downlink schedules ...` and `downlink purge` on the `downlink` parser."""
    schedules = commands.add_parser("schedules", help="run your tasks on cron or an interval")
    actions = schedules.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="schedule a task")
    create.add_argument("task", help="the task's registered name")
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help='5 fields, e.g. "*/30 * * * *"')
    when.add_argument("--every", type=float, metavar="S", help="every S seconds (at least 1)")
    create.add_argument("--timezone", metavar="ZONE", help="of --cron (IANA name; default UTC)")
    create.add_argument(
        "--arg", action="append", default=[], metavar="K=V", help="an argument, as `tasks enqueue`"
    )
    create.add_argument("--json-args", metavar="JSON", help="arguments as one JSON object")
    create.add_argument("--priority", type=int, help="1 (lowest) to 10 (highest)")
    create.add_argument(
        "--missed",
        choices=["skip", "once"],
        default="skip",
        help="runs missed while no scheduler ran: skip them (default) or run once for all",
    )
    create.add_argument("--name", help="a label of yours")
    create.add_argument("--paused", action="store_true", help="make it paused")
    listing = actions.add_parser("list", help="list your schedules, newest first")
    listing.add_argument("--page", type=int, default=1)
    one = [
        actions.add_parser(action, help=text)
        for action, text in (
            ("show", "show a schedule"),
            ("pause", "stop firing a schedule until resumed"),
            ("resume", "fire a paused schedule again, from its next run"),
            ("delete", "delete a schedule (its tasks stay)"),
            ("run", "enqueue one run of a schedule now"),
        )
    ]
    for parser in one:
        parser.add_argument("schedule_id")
    purge = commands.add_parser(
        "purge", help="admin: cancel every pending task of a queue (running ones go on)"
    )
    purge.add_argument("queue")
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    for parser in (create, listing, *one):
        _add_connection(parser)
        parser.set_defaults(func=run)
    _add_connection(purge)
    purge.set_defaults(func=run_purge)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--url",
        default=os.environ.get("DOWNLINK_URL") or os.environ.get("DOWNLINK_API_URL"),
        help="gateway URL (DOWNLINK_URL; default http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("DOWNLINK_TOKEN"), help="API token (DOWNLINK_TOKEN)"
    )


def run(args: argparse.Namespace) -> int:
    return _with_client(args, _COMMANDS[args.schedules_command])


def run_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        try:
            answer = input(f"Cancel every pending task of queue {args.queue!r}? [y/N] ")
        except EOFError:  # no one to answer: no
            answer = ""
        if answer.strip().lower() not in {"y", "yes"}:
            print("downlink: nothing purged", file=sys.stderr)
            return 1
    return _with_client(args, _purge)


def _with_client(args: argparse.Namespace, command: Command) -> int:
    # Imported here: `downlink token create` and the services need none of the client.
    from downlink import DownlinkError, SyncClient

    try:
        with SyncClient(args.url, args.token) as dl:
            return command(dl, args)
    except (DownlinkError, ValueError) as exc:
        print(f"downlink: {exc}", file=sys.stderr)
        return 1


def _create(dl: SyncClient, args: argparse.Namespace) -> int:
    made = dl.schedule(
        args.cron if args.cron is not None else args.every,
        args.task,
        parse_arguments(args.arg, args.json_args),
        timezone=args.timezone,
        priority=args.priority,
        missed=args.missed,
        name=args.name,
        paused=args.paused,
    )
    return _print_schedule(args, made, f"schedule {made.schedule_id} made")


def _list(dl: SyncClient, args: argparse.Namespace) -> int:
    page = dl.schedules(page=args.page)
    if args.json:
        _print_json(page)
        return 0
    table = Table(title=f"page {page.page}: {len(page.schedules)} of {page.total} schedule(s)")
    table.add_column("schedule id", no_wrap=True, min_width=36)  # whole: people copy it
    for heading in ("name", "task", "when", "next run", "last run", "last task"):
        table.add_column(heading)
    for schedule in page.schedules:
        table.add_row(
            schedule.schedule_id,
            schedule.name or "",
            schedule.task,
            _cadence(schedule),
            "paused" if schedule.paused else _time(schedule.next_run_at),
            _time(schedule.last_run_at),
            schedule.last_task_id or "",
        )
    console.print(table)
    return 0


def _show(dl: SyncClient, args: argparse.Namespace) -> int:
    found = dl.get_schedule(args.schedule_id)
    return _print_schedule(args, found, None)


def _pause(dl: SyncClient, args: argparse.Namespace) -> int:
    paused = dl.pause_schedule(args.schedule_id)
    return _print_schedule(args, paused, f"schedule {paused.schedule_id} paused")


def _resume(dl: SyncClient, args: argparse.Namespace) -> int:
    resumed = dl.resume_schedule(args.schedule_id)
    line = f"schedule {resumed.schedule_id} resumed; next run {_time(resumed.next_run_at)}"
    return _print_schedule(args, resumed, line)


def _delete(dl: SyncClient, args: argparse.Namespace) -> int:
    dl.delete_schedule(args.schedule_id)
    if args.json:
        _print_json({"schedule_id": args.schedule_id, "deleted": True})
    else:
        console.print(f"schedule {args.schedule_id} deleted", highlight=False)
    return 0


def _run_now(dl: SyncClient, args: argparse.Namespace) -> int:
    handle = dl.run_schedule(args.schedule_id)
    if args.json:
        _print_json({"schedule_id": args.schedule_id, "task_id": handle.task_id})
    else:
        console.print(f"schedule {args.schedule_id}: task {handle.task_id} queued", highlight=False)
    return 0


def _purge(dl: SyncClient, args: argparse.Namespace) -> int:
    purged = dl.purge(args.queue)
    if args.json:
        _print_json({"queue": args.queue, "purged": purged})
    else:
        console.print(f"queue {args.queue}: {purged} pending task(s) cancelled", highlight=False)
    return 0


def _print_schedule(args: argparse.Namespace, schedule: Schedule, line: str | None) -> int:
    if args.json:
        _print_json(schedule)
        return 0
    if line:
        console.print(line, highlight=False)
    table = Table(show_header=False, box=None, title=f"schedule {schedule.schedule_id}")
    rows = {
        "name": schedule.name or "",
        "task": f"{schedule.task} (queue {schedule.queue}, priority {schedule.priority})",
        "arguments": json.dumps(schedule.args),
        "when": _cadence(schedule),
        "missed runs": schedule.missed,
        "next run": "paused" if schedule.paused else _time(schedule.next_run_at),
        "last run": _time(schedule.last_run_at),
        "last task": schedule.last_task_id or "",
    }
    for name, value in rows.items():
        if value:
            table.add_row(name, value)
    console.print(table)
    return 0


def _cadence(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    return f"every {schedule.every_s:g} s"


def _time(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(timespec="seconds")


def _print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


_COMMANDS: dict[str, Command] = {
    "create": _create,
    "list": _list,
    "show": _show,
    "pause": _pause,
    "resume": _resume,
    "delete": _delete,
    "run": _run_now,
}
