"""`downlink submit | status | jobs | cancel | workers`: a small HTTP client for people."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich import filesize
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

_FINAL = {"completed", "partial", "failed", "cancelled"}
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
    submit.add_argument("-i", "--input", metavar="FILE", help="read URLs from FILE, one a line")
    submit.add_argument("--priority", type=int, default=5, help="1 (lowest) to 10 (highest)")
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends")
    submit.add_argument(
        "--export",
        choices=("zip", "tar.gz"),
        help="archive the job's files when it ends (with --wait: download it to -o)",
    )
    submit.add_argument(
        "-o", "--output", metavar="OUT", help="where --wait --export saves the archive"
    )
    status = commands.add_parser("status", help="show a job's status")
    status.add_argument("job_id")
    jobs = commands.add_parser("jobs", help="list your jobs, newest first")
    jobs.add_argument("--status", dest="status_filter")
    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    workers = commands.add_parser("workers", help="list the live service processes (admin)")
    for parser in (submit, status, jobs, cancel, workers):
        parser.add_argument(
            "--api",
            default=os.environ.get("DOWNLINK_API_URL", "http://127.0.0.1:8000"),
            help="gateway URL (DOWNLINK_API_URL)",
        )
        parser.add_argument(
            "--token", default=os.environ.get("DOWNLINK_TOKEN"), help="API token (DOWNLINK_TOKEN)"
        )
        parser.set_defaults(func=handler)


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("downlink: no token: pass --token or set DOWNLINK_TOKEN", file=sys.stderr)
        return 2
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


def _call(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = http.request(method, path, **kwargs)
    if response.status_code >= 400:
        try:
            detail = response.json()
        except ValueError:
            detail = response.text
        raise ClientError(f"{response.status_code}: {detail}")
    return response.json()


def _submit(http: httpx.Client, args: argparse.Namespace) -> int:
    urls = list(args.urls)
    if args.input:
        lines = Path(args.input).read_text().splitlines()
        urls += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not urls:
        raise ClientError("nothing to submit: give URLs or -i FILE")
    body: dict[str, Any] = {"urls": urls, "priority": args.priority}
    if args.export:
        body["export"] = {"format": args.export, "include_metadata": True}
    job = _call(http, "POST", "/api/v1/downloads/download", json=body)
    console.print(f"job [bold]{job['job_id']}[/] queued at position {job['queue_position']}")
    if not args.wait:
        return 0
    outcome = _wait(http, job["job_id"])
    if args.export:
        return max(outcome, _save_export(http, job["job_id"], args.output))
    return outcome


def _save_export(http: httpx.Client, job_id: str, output: str | None) -> int:
    """Wait for the job's automatic export and stream the archive to `output`."""
    from rich.progress import DownloadColumn

    result = _call(http, "GET", f"/api/v1/downloads/jobs/{job_id}/result")
    if result.get("export") is None:
        raise ClientError(f"job {job_id} ended without an export (no file was stored)")
    export_id = result["export"]["export_id"]
    with console.status(f"building export {export_id}"):
        while True:
            export = _call(http, "GET", f"/api/v1/downloads/exports/{export_id}")
            if export["status"] in ("ready", "failed", "cancelled"):
                break
            time.sleep(0.5)
    if export["status"] != "ready":
        raise ClientError(f"export {export_id} {export['status']}: {export.get('error')}")
    suffix = "zip" if export["format"] == "zip" else "tar.gz"
    target = Path(output or f"export-{export_id}.{suffix}")
    partial = target.with_name(target.name + ".part")
    with (
        Progress(TextColumn("saving"), BarColumn(), DownloadColumn(), console=console) as bar,
        http.stream("GET", export["download_url"], timeout=None) as response,
    ):
        if response.status_code != 200:
            raise ClientError(f"{response.status_code}: {response.read().decode(errors='replace')}")
        task = bar.add_task("saving", total=export["size"])
        with partial.open("wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
                bar.advance(task, len(chunk))
    partial.replace(target)
    console.print(f"saved {target} ({export['size']} bytes, sha256 {export['hash']})")
    return 0


def _wait(http: httpx.Client, job_id: str) -> int:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[files]}"),
        TextColumn("{task.fields[size]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("downloading", total=None, files="", size="")
        while True:
            status = _call(http, "GET", f"/api/v1/downloads/jobs/{job_id}")
            p = status["progress"]
            ended = p["completed"] + p["failed"]
            progress.update(
                bar,
                total=p["total"],
                completed=ended,
                files=f"{ended}/{p['total']} files",
                size=filesize.decimal(p["bytes_downloaded"]),
                description=status["status"],
            )
            if status["status"] in _FINAL:
                break
            time.sleep(0.5)
    result = _call(http, "GET", f"/api/v1/downloads/jobs/{job_id}/result")
    summary = result["summary"]
    console.print(
        f"{result['status']}: {summary['successful']} stored, {summary['failed']} failed, "
        f"{summary['total_size']} bytes"
    )
    for item in result["results"]:
        if item.get("error"):
            console.print(f"  [red]failed[/] {item['url']}: {item['error']}")
    return 0 if result["status"] == "completed" else 1


def _status(http: httpx.Client, args: argparse.Namespace) -> int:
    console.print_json(json.dumps(_call(http, "GET", f"/api/v1/downloads/jobs/{args.job_id}")))
    return 0


def _jobs(http: httpx.Client, args: argparse.Namespace) -> int:
    params = {"status_filter": args.status_filter} if args.status_filter else {}
    page = _call(http, "GET", "/api/v1/downloads/jobs", params=params)
    table = Table("job", "status", "priority", "files", "created")
    for job in page["jobs"]:
        p = job["progress"]
        table.add_row(
            job["job_id"],
            job["status"],
            str(job["priority"]),
            f"{p['completed']}/{p['total']}",
            job["created_at"],
        )
    console.print(table)
    return 0


def _cancel(http: httpx.Client, args: argparse.Namespace) -> int:
    result = _call(http, "POST", f"/api/v1/downloads/jobs/{args.job_id}/cancel", json={})
    console.print(f"job {result['job_id']} {result['status']}")
    return 0


def _workers(http: httpx.Client, args: argparse.Namespace) -> int:
    del args
    listed = _call(http, "GET", "/api/v1/workers")["workers"]
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


_COMMANDS: dict[str, Callable[[httpx.Client, argparse.Namespace], int]] = {
    "submit": _submit,
    "status": _status,
    "jobs": _jobs,
    "cancel": _cancel,
    "workers": _workers,
}
