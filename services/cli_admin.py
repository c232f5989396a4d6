"""`downlink queues`, `downlink dead-letters list | retry | discard`, `downlink retry-failed JOB`
and `downlink retry-tasks`: the operator's view of the streams and of failed work.

Built on downlink.SyncClient, like `downlink schedules`: tables for people, `--json` for
scripts (the API's own shape). The exit status is 0 on success, 1 when the API refused, the
gateway could not be reached, a bulk action was not confirmed, or it skipped a letter; 2 when
letter ids and --all are given together (or neither).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from downlink import SyncClient
    from downlink.client.models import (
        DeadLetterFilter,
        LettersDiscarded,
        LettersRetried,
        SkippedLetter,
    )

Command = Callable[["SyncClient", argparse.Namespace], int]
console = Console()
FILTER_KEYS = ("kind", "stream", "error", "job_id", "task", "failed_after", "failed_before")
_KINDS = ("download", "process", "task", "export", "event", "other")
# What the listing's id, kind, time and tries columns take, with every column's borders.
_LIST_COLUMNS_WIDTH = 15 + 8 + 19 + 5 + 6 * 3 + 1


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `downlink queues`, `dead-letters ...`, `retry-failed` and `retry-tasks`."""
    queues = commands.add_parser("queues", help="admin: length, pending and lag of every stream")
    _connection(queues, reads=True).set_defaults(func=_runner(_queues))

    letters = commands.add_parser("dead-letters", help="admin: list, re-drive or discard them")
    actions = letters.add_subparsers(dest="letters_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="dead letters matching the filters, newest first")
    listing.add_argument("--page", type=int, default=1)
    listing.add_argument("--per-page", type=int, default=20)
    _filters(_connection(listing, reads=True)).set_defaults(func=_runner(_list))
    for action, text in (
        ("retry", "queue the letters' work again (each as one retry does)"),
        ("discard", "remove the letters; their jobs and tasks stay as they ended"),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("ids", nargs="*", metavar="ID", help="letter ids (or --all)")
        parser.add_argument("--all", action="store_true", help="every letter matching --filter")
        parser.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
        parser.add_argument("--yes", "-y", action="store_true", help="do not ask to confirm --all")
        _filters(_connection(parser, reads=False)).set_defaults(func=run_bulk)

    failed_files = commands.add_parser("retry-failed", help="download a job's failed files again")
    failed_files.add_argument("job_id")
    _connection(failed_files, reads=False).set_defaults(func=_runner(_retry_failed))
    tasks = commands.add_parser("retry-tasks", help="run your failed and dead tasks again")
    tasks.add_argument("--task", help="only tasks of this registered name")
    tasks.add_argument("--status", action="append", choices=("failed", "dead"))
    tasks.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    _connection(tasks, reads=False).set_defaults(func=_runner(_retry_tasks))


def _connection(parser: argparse.ArgumentParser, *, reads: bool) -> argparse.ArgumentParser:
    help_text = "print JSON for scripts" if reads else "print the API's answer as JSON"
    parser.add_argument("--json", action="store_true", help=help_text)
    parser.add_argument(
        "--url",
        default=os.environ.get("DOWNLINK_URL") or os.environ.get("DOWNLINK_API_URL"),
        help="gateway URL (DOWNLINK_URL; default http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("DOWNLINK_TOKEN"), help="API token (DOWNLINK_TOKEN)"
    )
    return parser


def _filters(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"keys: {', '.join(FILTER_KEYS)}; kind is one of {', '.join(_KINDS)};"
        " times are ISO 8601 (UTC without a zone); repeat to narrow",
    )
    return parser


def parse_filter(pairs: Sequence[str]) -> DeadLetterFilter:
    """`["kind=download", "error=timeout"]` as a DeadLetterFilter; ValueError names a bad pair."""
    from downlink.client.models import DeadLetterFilter

    fields: dict[str, str | datetime] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in FILTER_KEYS:
            raise ValueError(f"--filter {pair!r}: expected KEY=VALUE, KEY one of {FILTER_KEYS}")
        if key == "kind" and value not in _KINDS:
            raise ValueError(f"--filter {pair!r}: kind is one of {', '.join(_KINDS)}")
        fields[key] = _moment(pair, value) if key.startswith("failed_") else value
    return msgspec.convert(fields, DeadLetterFilter, from_attributes=False)


def _moment(pair: str, value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--filter {pair!r}: not an ISO 8601 time") from None


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    return lambda args: _with_client(args, command)


def _with_client(args: argparse.Namespace, command: Command) -> int:
    # Imported here: `downlink token create` and the services need none of the client.
    from downlink import DownlinkError, SyncClient

    try:
        with SyncClient(args.url, args.token) as dl:
            return command(dl, args)
    except (DownlinkError, ValueError) as exc:
        print(f"downlink: {exc}", file=sys.stderr)
        return 1


def _queues(dl: SyncClient, args: argparse.Namespace) -> int:
    report = dl.queues()
    if args.json:
        _print_json(report)
        return 0
    table = Table(title=f"{report.dead_letters} dead letter(s), {report.delayed_retries} retries")
    for heading in ("stream", "group", "length", "pending", "lag", "consumers", "oldest pending"):
        table.add_column(heading, justify="left" if heading in ("stream", "group") else "right")
    for row in report.queues:
        table.add_row(
            row.stream,
            row.group,
            str(row.length),
            str(row.pending),
            "?" if row.lag is None else str(row.lag),
            str(row.consumers),
            "" if row.oldest_pending_s is None else f"{row.oldest_pending_s:.1f} s",
        )
    console.print(table)
    return 0


def _list(dl: SyncClient, args: argparse.Namespace) -> int:
    page = dl.dead_letters(parse_filter(args.filter), page=args.page, per_page=args.per_page)
    if args.json:
        _print_json(page)
        return 0
    shown = len(page.dead_letters)
    table = Table(title=f"page {page.page}: {shown} of {page.total} dead letter(s)")
    # Ids whole, people copy them into `retry ID` and --filter; the error is cut to what room
    # is left on the line (--json has it whole).
    for heading in ("id", "kind", "failed (UTC)", "tries", "job or task", "error"):
        table.add_column(heading, no_wrap=True, justify="right" if heading == "tries" else "left")
    work = [
        f"{letter.task} {letter.task_id}" if letter.task_id else letter.job_id or ""
        for letter in page.dead_letters
    ]
    room = max(20, console.width - _LIST_COLUMNS_WIDTH - max(map(len, work), default=0))
    for letter, names in zip(page.dead_letters, work, strict=True):
        table.add_row(
            letter.id,
            letter.kind,
            letter.failed_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(letter.attempts),
            names,
            letter.error if len(letter.error) <= room else letter.error[: room - 1] + "…",
        )
    console.print(table)
    return 0


def run_bulk(args: argparse.Namespace) -> int:
    """`dead-letters retry|discard`: ids, or --all with filters, confirmed unless --yes."""
    if bool(args.ids) == args.all:
        print("downlink: give letter ids or --all (with --filter), not both", file=sys.stderr)
        return 2
    if args.filter and not args.all:
        print("downlink: --filter selects letters with --all only", file=sys.stderr)
        return 2
    return _with_client(args, _bulk)


def _bulk(dl: SyncClient, args: argparse.Namespace) -> int:
    retry = args.letters_command == "retry"
    letter_filter = parse_filter(args.filter) if args.all else None
    if letter_filter is not None and not args.yes and not _confirmed(dl, args, letter_filter):
        print(f"downlink: nothing {'re-driven' if retry else 'discarded'}", file=sys.stderr)
        return 1
    if retry and len(args.ids) == 1:  # one letter: the single retry, whose refusal is an error
        _print_line(args, dl.retry_dead_letter(args.ids[0]), f"{args.ids[0]} requeued")
        return 0
    ids = args.ids or None
    if retry:
        retried = dl.retry_dead_letters(ids, letter_filter, limit=args.limit)
        return _print_outcome(args, retried, f"{retried.requeued} letter(s) re-driven")
    discarded = dl.discard_dead_letters(ids, letter_filter, limit=args.limit)
    return _print_outcome(args, discarded, f"{discarded.discarded} letter(s) discarded")


def _confirmed(dl: SyncClient, args: argparse.Namespace, letter_filter: DeadLetterFilter) -> bool:
    total = dl.dead_letters(letter_filter, per_page=1).total
    described = " ".join(args.filter) or "every letter"
    verb = "Re-drive" if args.letters_command == "retry" else "Discard"
    try:
        answer = input(f"{verb} {total} dead letter(s) matching {described}? [y/N] ")
    except EOFError:  # no one to answer: no
        answer = ""
    return answer.strip().lower() in {"y", "yes"}


def _print_outcome(
    args: argparse.Namespace, outcome: LettersRetried | LettersDiscarded, done: str
) -> int:
    if args.json:
        _print_json(outcome)
    else:
        console.print(f"{done}, {len(outcome.skipped)} skipped", highlight=False)
        _print_skipped(outcome.skipped)
        if outcome.remaining:
            console.print(f"{outcome.remaining} more match: run it again", highlight=False)
    return 1 if outcome.skipped else 0


def _print_skipped(skipped: Sequence[SkippedLetter]) -> None:
    if not skipped:
        return
    table = Table(title="skipped")
    for heading in ("id", "status", "reason"):
        table.add_column(heading)
    for letter in skipped:
        table.add_row(letter.id, str(letter.status_code), letter.reason)
    console.print(table)


def _retry_failed(dl: SyncClient, args: argparse.Namespace) -> int:
    retried = dl.retry_failed_files(args.job_id)
    line = f"job {retried.job_id}: {retried.requeued} failed file(s) queued again"
    return _print_line(args, retried, line)


def _retry_tasks(dl: SyncClient, args: argparse.Namespace) -> int:
    retried = dl.retry_tasks(args.task, args.status, limit=args.limit)
    if args.json:
        _print_json(retried)
        return 0
    console.print(f"{retried.requeued} task(s) queued again", highlight=False)
    for task_id in retried.task_ids:
        console.print(f"  {task_id}", highlight=False)
    for refused in retried.skipped:
        console.print(f"  skipped {refused.task_id}: {refused.reason}", highlight=False)
    if retried.remaining:
        console.print(f"{retried.remaining} more match: run it again", highlight=False)
    return 0


def _print_line(args: argparse.Namespace, answer: object, line: str) -> int:
    if args.json:
        _print_json(answer)
    else:
        console.print(line, highlight=False)
    return 0


def _print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
