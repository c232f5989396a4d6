"""`downlink submit | export | status | jobs | cancel | workers`: a small HTTP client for people.

submit and export follow the job and the archive live (services/cli_submit.py); the others are
one request each, a table for people or, with `--json`, the API's own JSON for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx
from rich import filesize
from rich.console import Console
from rich.table import Table

console = Console()


class ClientError(Exception):
    """The API refused a request; the message is the API's own."""


def add_client_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """Register the client subcommands on the `downlink` parser."""
    submit = commands.add_parser("submit", help="submit URLs for download")
    submit.add_argument("urls", nargs="*", metavar="URL")
    submit.add_argument(
        "-f", "--file", "-i", "--input", dest="file", metavar="LIST", help="URLs, one a line"
    )
    submit.add_argument("--priority", type=int, default=5, help="1 (lowest) to 10 (highest)")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job live (its event stream) until it ends"
    )
    submit.add_argument(
        "--export",
        choices=("zip", "tar.gz"),
        help="archive the job's files when it ends (with --wait: download it to -o)",
    )
    submit.add_argument(
        "-o", "--output", metavar="OUT", help="where --wait --export saves the archive"
    )
    export = commands.add_parser("export", help="archive a job's files and save the archive")
    export.add_argument("job_id")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="where to save it")
    export.add_argument("--format", choices=("zip", "tar.gz"), default="zip")
    status = commands.add_parser("status", help="show a job's status")
    status.add_argument("job_id")
    jobs = commands.add_parser("jobs", help="list your jobs, newest first")
    jobs.add_argument("--status", dest="status_filter")
    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    workers = commands.add_parser("workers", help="list the live service processes (admin)")
    for parser in (submit, export, status, jobs, cancel, workers):
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument(
            "--url",
            "--api",
            dest="api",
            metavar="URL",
            default=os.environ.get("DOWNLINK_URL")
            or os.environ.get("DOWNLINK_API_URL", "http://127.0.0.1:8000"),
            help="gateway URL (DOWNLINK_URL or DOWNLINK_API_URL)",
        )
        parser.add_argument(
            "--token", default=os.environ.get("DOWNLINK_TOKEN"), help="API token (DOWNLINK_TOKEN)"
        )
        parser.set_defaults(func=handler)


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("downlink: no token: pass --token or set DOWNLINK_TOKEN", file=sys.stderr)
        return 2
    if args.command in _LIVE_COMMANDS:
        return _run_live(args)
    with httpx.Client(
        base_url=args.api, headers={"Authorization": f"Bearer {args.token}"}, timeout=30
    ) as http:
        try:
            return _COMMANDS[args.command](http, args)
        except ClientError as exc:
            print(f"downlink: {exc}", file=sys.stderr)
            return 1
        except httpx.HTTPError as exc:
            print(f"downlink: cannot reach {args.api}: {exc}", file=sys.stderr)
            return 1


def _run_live(args: argparse.Namespace) -> int:
    # Imported here: `downlink token create` and the services need none of the client.
    from downlink import DownlinkError
    from downlink.client.live import LiveClient
    from services import cli_submit

    command = cli_submit.submit if args.command == "submit" else cli_submit.export
    try:
        with LiveClient(args.api, args.token) as dl:
            return command(dl, args)
    except (DownlinkError, TimeoutError, ValueError, OSError) as exc:
        print(f"downlink: {exc}", file=sys.stderr)
        return 1


def _call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = http.request(method, path, **kwargs)
    if response.status_code >= 400:
        try:
            detail = response.json()
        except ValueError:
            detail = response.text
        raise ClientError(f"{response.status_code}: {detail}")
    return response.json()


def _status(http: httpx.Client, args: argparse.Namespace) -> int:
    job = _call(http, "GET", f"/api/v1/downloads/jobs/{args.job_id}")
    if args.json:
        return _print_json(job)
    p = job["progress"]
    table = Table(show_header=False, box=None, title=f"job {job['job_id']}")
    rows = {
        "status": job["status"],
        "priority": str(job["priority"]),
        "files": f"{p['completed']} stored, {p['failed']} failed of {p['total']}",
        "bytes": filesize.decimal(p["bytes_downloaded"]),
        "created": job["created_at"],
        "updated": job["updated_at"],
        "error": job.get("error") or "",
    }
    for name, value in rows.items():
        if value:
            table.add_row(name, value)
    console.print(table)
    return 0


def _jobs(http: httpx.Client, args: argparse.Namespace) -> int:
    params = {"status_filter": args.status_filter} if args.status_filter else {}
    page = _call(http, "GET", "/api/v1/downloads/jobs", params=params)
    if args.json:
        return _print_json(page)
    table = Table("job", "status", "priority", "files", "created")
    table.columns[0].no_wrap = True  # whole: people copy it
    for job in page["jobs"]:
        p = job["progress"]
        table.add_row(
            job["job_id"],
            job["status"],
            str(job["priority"]),
            f"{p['completed']}/{p['total']}",
            job["created_at"][:19].replace("T", " "),
        )
    console.print(table)
    return 0


def _cancel(http: httpx.Client, args: argparse.Namespace) -> int:
    result = _call(http, "POST", f"/api/v1/downloads/jobs/{args.job_id}/cancel", json={})
    if args.json:
        return _print_json(result)
    console.print(f"job {result['job_id']} {result['status']}", highlight=False)
    return 0


def _workers(http: httpx.Client, args: argparse.Namespace) -> int:
    listed = _call(http, "GET", "/api/v1/workers")["workers"]
    if args.json:
        return _print_json({"workers": listed})
    table = Table(
        "service",
        "consumer",
        "host",
        "pid",
        "started",
        "last heartbeat",
        "in flight",
        "processed",
        "failed",
        title=f"{len(listed)} live worker(s)",
    )
    for worker in listed:
        table.add_row(
            worker["service"],
            worker["consumer"],
            worker["host"],
            str(worker["pid"]),
            worker["started_at"],
            worker["last_heartbeat"],
            str(worker["in_flight"]),
            str(worker["processed"]),
            str(worker["failed"]),
        )
    console.print(table)
    return 0


def _print_json(value: object) -> int:
    sys.stdout.write(json.dumps(value) + "\n")
    return 0


_LIVE_COMMANDS = {"submit", "export"}
_COMMANDS: dict[str, Callable[[httpx.Client, argparse.Namespace], int]] = {
    "status": _status,
    "jobs": _jobs,
    "cancel": _cancel,
    "workers": _workers,
}
