"""`downlink submit ... --wait` and `downlink export`: a job followed live over its event stream
(never by polling its status), and an archive saved whole or not at all.

Exit status: 0 when the job completed (or the archive was saved), 1 when it ended partial,
failed or cancelled, or the API refused, 130 on Ctrl-C (the job goes on without us).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import msgspec
from rich import filesize
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from services.cli_progress import JobTally, display_for

if TYPE_CHECKING:
    import argparse

    from downlink.client.live import LiveClient, SavedExport
    from downlink.client.models import Export, JobResult

console = Console()
INTERRUPTED = 130


def submit(dl: LiveClient, args: argparse.Namespace) -> int:
    urls = list(args.urls)
    if args.file:
        lines = Path(args.file).read_text().splitlines()
        urls += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not urls:
        raise ValueError("nothing to submit: give URLs or --file LIST")
    options: dict[str, Any] = {}
    if args.export:
        options["export"] = {"format": args.export, "include_metadata": True}
    job = dl.download(urls, priority=args.priority, **options)
    assert job.submitted is not None
    if not args.wait:
        if args.json:
            _print_json(job.submitted)
        else:
            console.print(
                f"job {job.job_id} queued at position {job.submitted.queue_position}",
                highlight=False,
            )
        return 0
    if not args.json:
        console.print(
            f"job {job.job_id} queued, following it (Ctrl-C leaves it running)", highlight=False
        )
    outcome = follow(dl, job.job_id, quiet=args.json)
    if args.export and outcome != INTERRUPTED:
        saved = _save_job_export(dl, job.job_id, args.output, args.export, quiet=args.json)
        if saved == INTERRUPTED:
            return INTERRUPTED
        outcome = max(outcome, saved)
    return outcome


def follow(dl: LiveClient, job_id: str, *, quiet: bool = False) -> int:
    """Draw the job's progress from its events until it ends, then its summary."""
    started = time.monotonic()
    before = dl.job_result(job_id)
    tally = JobTally(
        before.summary.total_requested, {f.file_id: _label(f.url) for f in before.results}
    )
    try:
        if quiet:
            for event in dl.job_events(job_id):
                tally.apply(event)
        else:
            with display_for(console, tally) as display:
                for event in dl.job_events(job_id):
                    display.show(tally.apply(event))
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: job {job_id} keeps running; `downlink status {job_id}` shows it",
            file=sys.stderr,
        )
        return INTERRUPTED
    result = dl.job_result(job_id)
    if quiet:
        _print_json(result)
    else:
        _print_summary(result, time.monotonic() - started)
    return 0 if result.status == "completed" else 1


def _print_summary(result: JobResult, elapsed_s: float) -> None:
    summary = result.summary
    console.print(
        f"{result.status}: {summary.successful} stored, {summary.failed} failed, "
        f"{filesize.decimal(summary.total_size)} in {elapsed_s:.1f} s",
        highlight=False,
    )
    for item in result.results:
        if item.error:
            console.print(f"  failed {item.url}: {item.error}", highlight=False, markup=False)


def export(dl: LiveClient, args: argparse.Namespace) -> int:
    created = dl.request_export(args.job_id, args.format)
    if not args.json:
        console.print(
            f"export {created.export_id} queued: {created.file_count} file(s), "
            f"{filesize.decimal(created.total_bytes)}",
            highlight=False,
        )
    return _save(dl, created.export_id, Path(args.output), quiet=args.json)


def _save_job_export(
    dl: LiveClient, job_id: str, output: str | None, archive_format: str, *, quiet: bool
) -> int:
    """Save the archive the job was submitted with (`submit --export`)."""
    ref = dl.job_result(job_id).export
    if ref is None:
        raise ValueError(f"job {job_id} ended without an export (no file was stored)")
    target = Path(output or f"export-{ref.export_id}.{archive_format}")
    return _save(dl, ref.export_id, target, quiet=quiet)


def _save(dl: LiveClient, export_id: str, target: Path, *, quiet: bool) -> int:
    try:
        if quiet or not console.is_terminal:
            saved = dl.save_export(export_id, target)
        else:
            saved = _save_with_bars(dl, export_id, target)
    except KeyboardInterrupt:
        print(f"\ninterrupted: export {export_id} was not saved", file=sys.stderr)
        return INTERRUPTED
    if quiet:
        _print_json(saved)
    else:
        console.print(
            f"saved {saved.path} ({saved.size} bytes, {saved.file_count} file(s), "
            f"sha256 {saved.sha256})",
            highlight=False,
            soft_wrap=True,
        )
    return 0


def _save_with_bars(dl: LiveClient, export_id: str, target: Path) -> SavedExport:
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, TransferSpeedColumn(), console=console) as bars:
        building = bars.add_task("building", total=None)
        saving = bars.add_task("saving", total=None, visible=False)

        def built(state: Export) -> None:
            bars.update(
                building,
                total=state.total_bytes or None,
                completed=state.progress.bytes_done,
                description=f"building ({state.status})",
            )
            if state.size is not None:
                bars.update(building, completed=state.total_bytes)
                bars.update(saving, total=state.size, visible=True)

        return dl.save_export(
            export_id,
            target,
            on_progress=built,
            on_bytes=lambda size: bars.advance(saving, size),
        )


def _label(url: str) -> str:
    name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return name or url


def _print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
