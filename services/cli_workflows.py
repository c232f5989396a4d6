"""`downlink workflows submit | status | list | cancel`: your registered workflows from the shell.

Built on downlink.SyncClient, like `downlink tasks`: a tree of the steps for people (a step a
fan-out made sits under the step that made it), `--json` for scripts (one JSON document on
stdout, the API's own shape). The exit status is 0 on success, 1 when the API refused, the
gateway could not be reached, or a waited-for workflow did not complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from services.cli_tasks import parse_arguments

if TYPE_CHECKING:
    from datetime import datetime

    from downlink import SyncClient
    from downlink.client.models import Workflow, WorkflowStep

Command = Callable[["SyncClient", argparse.Namespace], int]
console = Console()

_STYLES = {
    "completed": "green",
    "failed": "red",
    "partial": "yellow",
    "cancelled": "magenta",
    "skipped": "dim",
    "running": "cyan",
    "launched": "cyan",
    "expanded": "blue",
}


def add_workflow_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `downlink workflows ...` on the `downlink` parser."""
    workflows = commands.add_parser(
        "workflows", help="run and follow workflows (@downlink.workflow)"
    )
    actions = workflows.add_subparsers(dest="workflows_command", required=True, metavar="ACTION")
    submit = actions.add_parser("submit", help="start a registered workflow")
    submit.add_argument("name", help="the workflow's registered name")
    submit.add_argument(
        "--arg", action="append", default=[], metavar="K=V", help="an argument, as `tasks enqueue`"
    )
    submit.add_argument("--json-args", metavar="JSON", help="arguments as one JSON object")
    submit.add_argument(
        "--allow-partial", action="store_true", help="let the other branches run on past a failure"
    )
    submit.add_argument("--wait", action="store_true", help="wait until it ends, then show it")
    submit.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up after S")
    status = actions.add_parser("status", help="show a workflow and each of its steps")
    status.add_argument("workflow_id")
    listing = actions.add_parser("list", help="list your workflows, newest first")
    listing.add_argument("--status", help="running, completed, partial, failed, cancelled")
    listing.add_argument("--page", type=int, default=1)
    cancel = actions.add_parser("cancel", help="cancel a workflow that has not ended")
    cancel.add_argument("workflow_id")
    for parser in (submit, status, listing, cancel):
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
            return _COMMANDS[args.workflows_command](dl, args)
    except (DownlinkError, TimeoutError, ValueError) as exc:
        print(f"downlink: {exc}", file=sys.stderr)
        return 1


def _submit(dl: SyncClient, args: argparse.Namespace) -> int:
    submitted = dl.submit_workflow(
        args.name, parse_arguments(args.arg, args.json_args), allow_partial=args.allow_partial
    )
    if not args.wait:
        if args.json:
            _print_json(submitted)
        else:
            again = " (already submitted with this key)" if submitted.existing else ""
            console.print(
                f"workflow {submitted.workflow_id} {submitted.status}: "
                f"{submitted.steps} step(s){again}",
                highlight=False,
            )
        return 0
    waiting = f"workflow {submitted.workflow_id} running, waiting for it"
    with contextlib.nullcontext() if args.json else console.status(waiting):
        done = dl.wait_workflow(submitted.workflow_id, timeout=args.timeout)
    _show(args, done)
    return 0 if done.status == "completed" else 1


def _status(dl: SyncClient, args: argparse.Namespace) -> int:
    _show(args, dl.get_workflow(args.workflow_id))
    return 0


def _list(dl: SyncClient, args: argparse.Namespace) -> int:
    page = dl.workflows(status=args.status, page=args.page)
    if args.json:
        _print_json(page)
        return 0
    table = Table(title=f"page {page.page}: {len(page.workflows)} of {page.total} workflow(s)")
    table.add_column("workflow id", no_wrap=True, min_width=36)  # whole: people copy it
    for heading in ("name", "status", "created", "finished"):
        table.add_column(heading)
    for flow in page.workflows:
        table.add_row(
            flow.workflow_id,
            flow.name or "(inline)",
            Text(flow.status, style=_STYLES.get(flow.status, "")),
            _time(flow.created_at),
            "" if flow.finished_at is None else _time(flow.finished_at),
        )
    console.print(table)
    return 0


def _cancel(dl: SyncClient, args: argparse.Namespace) -> int:
    cancelled = dl.cancel_workflow(args.workflow_id)
    if args.json:
        _print_json(cancelled)
    else:
        console.print(f"workflow {cancelled.workflow_id} {cancelled.status}", highlight=False)
    return 0


def _show(args: argparse.Namespace, flow: Workflow) -> None:
    if args.json:
        _print_json(flow)
        return
    console.print(step_tree(flow))
    if flow.result is not None:
        console.print(f"result: {json.dumps(flow.result)}", highlight=False, markup=False)
    if flow.error:
        console.print(flow.error, style="red", highlight=False, markup=False)


def step_tree(flow: Workflow) -> Tree:
    """The workflow as a tree: its steps in order, each fan-out's steps under their maker."""
    title = Text(f"workflow {flow.workflow_id} {flow.name or '(inline)'}: ")
    title.append(flow.status, style=_STYLES.get(flow.status, "bold"))
    tree = Tree(title)
    nodes: dict[str, Tree] = {}
    for step in flow.steps:
        parent = nodes.get(step.owner, tree) if step.owner else tree
        nodes[step.key] = parent.add(_step_label(step))
    return tree


def _step_label(step: WorkflowStep) -> Text:
    label = Text(f"{step.key} ")
    label.append(step.status, style=_STYLES.get(step.status, ""))
    facts = [step.task if step.kind == "task" else f"{step.kind} {step.task}".strip()]
    if step.attempts:
        facts.append(f"{step.attempts} tr{'y' if step.attempts == 1 else 'ies'}")
    if step.duration_s is not None:
        facts.append(f"{step.duration_s:.2f} s")
    if step.after:
        facts.append(f"after {', '.join(step.after)}")
    label.append(f"  {' · '.join(facts)}", style="dim")
    if step.error:
        label.append(f"\n{step.error.splitlines()[0]}", style="red")
    elif step.result is not None:
        label.append(f"  → {_brief(step.result)}")
    return label


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _brief(value: object, width: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


_COMMANDS: dict[str, Command] = {
    "submit": _submit,
    "status": _status,
    "list": _list,
    "cancel": _cancel,
}
