"""`LiveClient`: a SyncClient that also hands over a job's events one by one and reports an
export's progress, for displays that move with the job (the `downlink` command's bars).

with LiveClient(url, token) as dl:
    for event in dl.job_events(job_id):  # resumes across dropped connections (Last-Event-ID)
        print(event.type, event.data)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from downlink.client.downloads import save_export, wait_export
from downlink.client.errors import error_for
from downlink.client.models import ArchiveFormat, Export, ExportCreated
from downlink.client.protocol import (
    API,
    Operation,
    Sink,
    call,
    connection_failed,
)
from downlink.client.sse import EventParser, ServerEvent
from downlink.client.synchronous import SyncClient
from shared.statuses import FINAL_JOB_STATUSES
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

log = logging.getLogger("downlink.client")

JOB_FINISHED = "job.finished"
# The gateway sends a comment every 15 s on a quiet stream; silence past this is a dead one.
QUIET_STREAM_S = 40.0
# Reconnecting after a drop: quick at first (a gateway restart), then no more than this often.
FIRST_RECONNECT_S = 0.2
MAX_RECONNECT_S = 5.0
# Failed connection attempts in a row before the stream is given up on.
MAX_RECONNECTS = 20


class SavedExport(msgspec.Struct, frozen=True, kw_only=True):
    """An archive saved to `path`, its SHA-256 checked against the gateway's."""

    export_id: str
    path: str
    size: int
    sha256: str
    file_count: int


class _CountingSink(Sink):
    """A Sink that reports each chunk's size as it is written."""

    def __init__(self, target: Path, on_bytes: Callable[[int], object]) -> None:
        super().__init__(target)
        self._on_bytes = on_bytes

    def write(self, chunk: bytes) -> None:
        super().write(chunk)
        self._on_bytes(len(chunk))


class LiveClient(SyncClient):
    """A SyncClient (url, token, timeout_s as there) with a job's events and export progress."""

    def job_events(self, job_id: str, *, after: int = 0) -> Iterator[ServerEvent]:
        """The job's events after event id `after`, in order, until its job.finished.

        A dropped connection is reopened with Last-Event-ID, so no event is missed or repeated;
        a stream that ends while the job has already ended (one that predates the event log)
        ends the iteration. Raises ConnectionFailed after MAX_RECONNECTS failures in a row.
        """
        last, failures, pause_s = after, 0, FIRST_RECONNECT_S
        while True:
            try:
                for event in self._read_stream(job_id, last):
                    failures, pause_s = 0, FIRST_RECONNECT_S
                    last = event.id if event.id is not None else last
                    yield event
                    if event.type == JOB_FINISHED:
                        return
            except httpx.HTTPError as exc:
                failures += 1
                if failures >= MAX_RECONNECTS:
                    raise connection_failed(exc, self.url) from exc
                log.info("job %s: event stream broke (%s), resuming after %d", job_id, exc, last)
            else:
                # A clean end without job.finished: the gateway is shutting down, or the job
                # ended before its log existed; only the latter ends the iteration.
                if self.get_job(job_id).status in FINAL_JOB_STATUSES:
                    return
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, MAX_RECONNECT_S)

    def _read_stream(self, job_id: str, last: int) -> Iterator[ServerEvent]:
        headers = trace_headers() | {"Accept": "text/event-stream"}
        if last:
            headers["Last-Event-ID"] = str(last)
        timeout = httpx.Timeout(self._http.timeout.connect, read=QUIET_STREAM_S)
        path = f"{API}/downloads/jobs/{job_id}/events"
        with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                raise error_for(response.status_code, response.read(), dict(response.headers))
            parser = EventParser()
            for line in response.iter_lines():
                if (event := parser.feed(line)) is not None:
                    yield event

    def request_export(self, job_id: str, archive_format: ArchiveFormat = "zip") -> ExportCreated:
        """Queue an archive of the job's files (with manifest, SHA256SUMS and STAC items)."""
        body = {"job_ids": [job_id], "export_format": archive_format, "include_metadata": True}
        return self._run(call("POST", f"{API}/downloads/export", ExportCreated, json=body))

    def save_export(
        self,
        export_id: str,
        path: str | Path,
        *,
        on_progress: Callable[[Export], object] | None = None,
        on_bytes: Callable[[int], object] | None = None,
        timeout: float | None = None,
    ) -> SavedExport:
        """Wait while the export is built, then save its archive to `path`.

        `on_progress` sees each state of the export while it is built, `on_bytes` the size of
        each chunk saved. The archive lands beside `path` first and is moved there once its
        SHA-256 matches the gateway's; on any failure nothing is left behind.
        """
        return self._run(
            _save_export(
                export_id,
                Path(path),
                on_progress=on_progress or _ignore,
                on_bytes=on_bytes or _ignore,
                timeout_s=timeout,
            )
        )


def _ignore(_: Any) -> None:
    return None


def _save_export(
    export_id: str,
    target: Path,
    *,
    on_progress: Callable[[Export], object],
    on_bytes: Callable[[int], object],
    timeout_s: float | None,
) -> Operation[SavedExport]:
    export = yield from wait_export(export_id, timeout_s, on_progress)
    sinks: list[_CountingSink] = []

    def counting(partial: Path) -> Sink:
        sinks.append(_CountingSink(partial, on_bytes))
        return sinks[-1]

    yield from save_export(export, target, counting)
    return SavedExport(
        export_id=export.export_id,
        path=str(target),
        size=sinks[0].size,
        sha256=export.hash or "",
        file_count=export.file_count,
    )
