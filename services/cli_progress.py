"""A job's progress as `downlink submit --wait` draws it, from the job's events alone.

`JobTally` folds the events into counts; `LiveBars` draws them as rich bars (one for the job,
one per large file) on a terminal, `PlainLines` as plain lines elsewhere (CI logs, pipes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

import msgspec
from rich import filesize
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from types import TracebackType

    from rich.console import Console

    from downlink.client.sse import ServerEvent

# A file gets a bar of its own once it is this large (or its server said how large it is):
# smaller ones end before a bar would be read.
LARGE_FILE_BYTES = 8 * 1024 * 1024
# Without a terminal, one progress line per file at most this often.
PLAIN_LINE_EVERY_S = 2.0


@dataclass
class FileState:
    """One file of the job as its events left it."""

    file_id: str
    label: str
    bytes_done: int = 0
    total_bytes: int | None = None
    rate_bps: float = 0.0
    ended: str | None = None  # "stored" or "failed"
    error: str | None = None

    @property
    def large(self) -> bool:
        return self.total_bytes is not None or self.bytes_done > LARGE_FILE_BYTES


@dataclass(frozen=True)
class Change:
    """What one event changed: its type, and the file it was about (None for job events)."""

    kind: str
    file: FileState | None
    payload: dict[str, Any]


class JobTally:
    """The job's files, stored and failed counts and bytes, kept from its events."""

    def __init__(self, total: int, labels: dict[str, str]) -> None:
        self.total = total
        self.files = {file_id: FileState(file_id, label) for file_id, label in labels.items()}
        self.status: str | None = None

    @property
    def ended(self) -> int:
        return sum(1 for f in self.files.values() if f.ended)

    @property
    def bytes_done(self) -> int:
        return sum(f.bytes_done for f in self.files.values() if f.ended != "failed")

    def apply(self, event: ServerEvent) -> Change:
        payload: dict[str, Any] = msgspec.json.decode(event.data)
        file_id = payload.get("file_id")
        file = None
        if isinstance(file_id, str):
            file = self.files.setdefault(file_id, FileState(file_id, file_id))
            self._apply_to_file(event.type, payload, file)
        elif event.type == "job.finished":
            self.status = str(payload.get("status"))
        return Change(event.type, file, payload)

    @staticmethod
    def _apply_to_file(kind: str, payload: dict[str, Any], file: FileState) -> None:
        if kind == "file.progress":
            file.bytes_done = int(payload.get("bytes_downloaded", 0))
            file.total_bytes = payload.get("total_bytes")
            file.rate_bps = float(payload.get("rate_bps", 0.0))
        elif kind == "file.downloaded":
            file.bytes_done = int(payload.get("size", 0))
            file.ended, file.error = "stored", None
            file.label = str(payload.get("filename") or file.label)
        elif kind == "file.failed":
            file.ended, file.error = "failed", str(payload.get("error", ""))
        elif kind == "file.started":
            # A retry starts over unless it resumes with a Range; its progress will say.
            file.ended = None


class JobDisplay(Protocol):
    """Shows the tally as events change it."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def show(self, change: Change) -> None: ...


class LiveBars:
    """Rich bars on a terminal: the job's files and bytes, and each large file's bytes."""

    def __init__(self, console: Console, tally: JobTally) -> None:
        self._tally = tally
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._job = self._progress.add_task("job", total=tally.total, count="", start=True)
        self._bars: dict[str, TaskID] = {}
        self._refresh_job()

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def show(self, change: Change) -> None:
        file = change.file
        if file is not None and (file.large or file.file_id in self._bars):
            bar = self._bars.get(file.file_id)
            if bar is None:
                bar = self._progress.add_task(_short(file.label), total=file.total_bytes, count="")
                self._bars[file.file_id] = bar
            total = file.total_bytes if not file.ended else file.bytes_done
            self._progress.update(bar, completed=file.bytes_done, total=total, count=_bytes(file))
            if file.ended:
                self._progress.update(bar, description=f"{_short(file.label)} {file.ended}")
        self._refresh_job()

    def _refresh_job(self) -> None:
        tally = self._tally
        self._progress.update(
            self._job,
            completed=tally.ended,
            count=f"{tally.ended}/{tally.total} files, {_size(tally.bytes_done)}",
            description=f"job ({tally.status})" if tally.status else "job",
        )


class PlainLines:
    """One line per file end, retry and job end, and a throttled line of each file's bytes."""

    def __init__(self, console: Console, tally: JobTally) -> None:
        self._console = console
        self._tally = tally
        self._last_line: dict[str, float] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def show(self, change: Change) -> None:
        file, tally = change.file, self._tally
        if change.kind == "file.progress" and file is not None:
            now = time.monotonic()
            if now - self._last_line.get(file.file_id, 0.0) >= PLAIN_LINE_EVERY_S:
                self._last_line[file.file_id] = now
                total = "" if file.total_bytes is None else f" of {_size(file.total_bytes)}"
                self._line(f"{file.label}: {_size(file.bytes_done)}{total}")
        elif change.kind == "file.retrying" and file is not None:
            self._line(f"{file.label}: retrying ({change.payload.get('error', '')})")
        elif change.kind in ("file.downloaded", "file.failed") and file is not None:
            what = f"stored ({_size(file.bytes_done)})" if file.ended == "stored" else "failed"
            self._line(
                f"{file.label}: {what}; {tally.ended}/{tally.total} files, "
                f"{_size(tally.bytes_done)}"
            )
        elif change.kind == "job.finished":
            self._line(f"job {tally.status}")

    def _line(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False, soft_wrap=True)


def display_for(console: Console, tally: JobTally) -> JobDisplay:
    """Bars on a terminal, plain lines otherwise."""
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveBars(console, tally)
    return PlainLines(console, tally)


def _bytes(file: FileState) -> str:
    done = _size(file.bytes_done)
    if file.ended or file.total_bytes is None:
        return done
    return f"{done} of {_size(file.total_bytes)}, {_size(int(file.rate_bps))}/s"


def _size(count: int) -> str:
    return filesize.decimal(count)


def _short(label: str, width: int = 40) -> str:
    return label if len(label) <= width else "…" + label[-(width - 1) :]
