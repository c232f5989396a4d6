"""Operations on download jobs: submit, status, result, cancel, following one to its end, and
exporting its files as an archive saved to disk."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from downlink.client.errors import ConnectionFailed, DownlinkError, ExportFailedError, error_for
from downlink.client.models import (
    ArchiveFormat,
    Export,
    ExportCreated,
    Job,
    JobProgress,
    JobResult,
    Submitted,
)
from downlink.client.protocol import (
    API,
    FIRST_POLL_S,
    MAX_POLL_S,
    Deadline,
    NextEvent,
    OpenEvents,
    Operation,
    Reply,
    Save,
    Sink,
    Sleep,
    call,
)
from downlink.client.sse import ServerEvent
from shared.statuses import FINAL_JOB_STATUSES, ExportStatus

log = logging.getLogger("downlink.client")

# While events stream in, progress is re-read at most this often: a 10 000-file job must not
# cost a status request per event.
REFRESH_S = 0.25
# The gateway sends a comment every 15 s on a quiet stream; silence past this is a dead one.
QUIET_STREAM_S = 40.0
_FINAL_EXPORT = {ExportStatus.READY, ExportStatus.FAILED, ExportStatus.CANCELLED}


def submit(
    urls: Sequence[str], *, priority: int, options: Mapping[str, Any], idempotency_key: str | None
) -> Operation[Submitted]:
    body = {"urls": [urls] if isinstance(urls, str) else list(urls), "priority": priority}
    return (
        yield from call(
            "POST",
            f"{API}/downloads/download",
            Submitted,
            json=body | dict(options),
            headers={"Idempotency-Key": idempotency_key},
        )
    )


def get_job(job_id: str) -> Operation[Job]:
    return (yield from call("GET", f"{API}/downloads/jobs/{job_id}", Job))


def job_result(job_id: str) -> Operation[JobResult]:
    return (yield from call("GET", f"{API}/downloads/jobs/{job_id}/result", JobResult))


def cancel_job(job_id: str, reason: str | None) -> Operation[Job]:
    body = {"reason": reason} if reason else {}
    yield from call("POST", f"{API}/downloads/jobs/{job_id}/cancel", dict, json=body)
    return (yield from get_job(job_id))


ProgressCallback = Callable[[JobProgress], object]


class _Reporter:
    """Calls the progress callback when the counts moved since it last did."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._last: JobProgress | None = None

    def saw(self, job: Job) -> Job:
        if self._callback is not None and job.progress != self._last:
            self._last = job.progress
            self._callback(job.progress)
        return job


def wait_job(
    job_id: str, progress: ProgressCallback | None, timeout_s: float | None
) -> Operation[Job]:
    """Follow the job until it ends: its event stream as the signal, polling when it fails."""
    limit = Deadline(timeout_s)
    reporter = _Reporter(progress)
    job = reporter.saw((yield from get_job(job_id)))
    streaming, after = True, 0
    while job.status not in FINAL_JOB_STATUSES:
        left = limit.left(f"job {job_id} still {job.status}")
        if streaming:
            streaming, after = yield from _follow_events(job_id, after, left, reporter)
        else:
            yield Sleep(min(MAX_POLL_S / 2, left))
        job = reporter.saw((yield from get_job(job_id)))
    return job


def _follow_events(
    job_id: str, after: int, left_s: float, reporter: _Reporter
) -> Operation[tuple[bool, int]]:
    """Read the job's events until its stream ends, re-reading progress as they come.

    Returns whether streaming still works, and the id of the last event seen (to resume after).
    """
    path = f"{API}/downloads/jobs/{job_id}/events"
    try:
        opened: Reply = yield OpenEvents(
            path=path, params={"after": after}, read_timeout_s=min(left_s, QUIET_STREAM_S)
        )
        if opened.status in (401, 403, 404):
            raise error_for(opened.status, opened.body, opened.headers)
        if opened.status != 200:
            log.info("job %s: no event stream (HTTP %d), polling", job_id, opened.status)
            return False, after
        refreshed = time.monotonic()
        while (event := (yield NextEvent())) is not None:
            assert isinstance(event, ServerEvent)
            after = event.id if event.id is not None else after
            if event.type == "job.finished":
                break
            if time.monotonic() - refreshed >= REFRESH_S:
                reporter.saw((yield from get_job(job_id)))
                refreshed = time.monotonic()
    except ConnectionFailed as exc:
        log.info("job %s: event stream broke (%s), polling", job_id, exc)
        return False, after
    return True, after


def export_job(
    job_id: str,
    archive_format: ArchiveFormat,
    target: Path | None,
    *,
    include_metadata: bool,
    timeout_s: float | None,
) -> Operation[Path]:
    """Request an archive of the job's files, wait until it is built, and save it to `target`."""
    body = {
        "job_ids": [job_id],
        "export_format": archive_format,
        "include_metadata": include_metadata,
    }
    created = yield from call("POST", f"{API}/downloads/export", ExportCreated, json=body)
    export = yield from wait_export(created.export_id, timeout_s)
    target = target or Path(f"export-{export.export_id}.{export.format}")
    return (yield from save_export(export, target))


def wait_export(
    export_id: str, timeout_s: float | None, on_progress: Callable[[Export], object] | None = None
) -> Operation[Export]:
    """The export once it is ready (ExportFailedError otherwise); `on_progress` sees each
    state while it is built."""
    limit = Deadline(timeout_s)
    pause_s = FIRST_POLL_S
    while True:
        export = yield from get_export(export_id)
        if on_progress is not None:
            on_progress(export)
        if export.status in _FINAL_EXPORT:
            break
        yield Sleep(min(pause_s, limit.left(f"export {export_id} still {export.status}")))
        pause_s = min(pause_s * 1.5, MAX_POLL_S)
    if export.status is not ExportStatus.READY or export.download_url is None:
        raise ExportFailedError(export.export_id, export.status, export.error)
    return export


def get_export(export_id: str) -> Operation[Export]:
    return (yield from call("GET", f"{API}/downloads/exports/{export_id}", Export))


def save_export(
    export: Export, target: Path, sink_for: Callable[[Path], Sink] = Sink
) -> Operation[Path]:
    """Stream the ready archive beside `target` (into `sink_for(partial path)`), check its
    SHA-256, then move it into place; on any failure nothing is left behind."""
    assert export.download_url is not None
    partial = target.with_name(target.name + ".part")
    sink = sink_for(partial)
    try:
        try:
            reply: Reply = yield Save(path=export.download_url, sink=sink)
        finally:
            sha256 = sink.close()
        if reply.status >= 400:
            raise error_for(reply.status, reply.body, reply.headers)
        if export.hash and sha256 != export.hash:
            raise DownlinkError(
                f"export {export.export_id}: the archive saved hashes to {sha256}, "
                f"the gateway recorded {export.hash}"
            )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    log.info("export %s saved to %s (%d bytes)", export.export_id, target, sink.size)
    return target
