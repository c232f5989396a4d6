"""Commands carried by the work lanes and events carried by `downlink:events`.

Evolution rules (the wire outlives the code):
- A new field gets a default, so old payloads still decode.
- A tag is never retyped or reused; renaming a class never changes its tag.
- Unknown fields are tolerated on decode, so a newer producer never breaks an older consumer.
- HTTP bodies (services/gateway/schemas.py) are strict instead: forbid_unknown_fields=True.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.ids import EventId, FileId, JobId, UserId

Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


# --- commands: one consumer group each ----------------------------------------------------------


class Command(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of every imperative message on a work lane.

    Attributes:
        job_id: the job the work belongs to.
    """

    job_id: JobId


class DownloadFile(Command, tag="download.file", frozen=True):
    """Fetch one URL into storage.

    Attributes:
        file_id: the file row this download fills.
        user_id: the owner; stored paths live under the owner's area.
        url: http(s) URL to fetch.
        filename: the name the user asked for, or None to take it from the response.
        sha256: the expected hex digest, verified after the last byte.
        priority: 1-10, decides the lane.
    """

    file_id: FileId
    user_id: UserId
    url: str
    filename: str | None = None
    sha256: Sha256Hex | None = None
    priority: int = 5


WorkCommand = DownloadFile
COMMAND_DECODER = msgspec.json.Decoder(WorkCommand)


# --- events: facts for any consumer -------------------------------------------------------------


class Event(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of every fact on `downlink:events`.

    Attributes:
        event_id: unique per event; consumers deduplicate on it.
        job_id: the job the fact is about.
        at: Unix time (seconds) at which it happened.
    """

    event_id: EventId
    job_id: JobId
    at: float


class FileStarted(Event, tag="file.started", frozen=True):
    """A downloader began (or resumed) fetching a file.

    Attributes:
        file_id: the file.
        attempt: 1 for the first try.
        worker: consumer name of the downloader.
    """

    file_id: FileId
    attempt: int = 1
    worker: str = ""


class FileProgress(Event, tag="file.progress", frozen=True):
    """Throttled progress of one file.

    Attributes:
        file_id: the file.
        bytes_downloaded: bytes in storage so far.
        total_bytes: Content-Length when the server sent one.
        rate_bps: recent transfer rate in bytes per second.
    """

    file_id: FileId
    bytes_downloaded: int
    total_bytes: int | None = None
    rate_bps: float = 0.0


class FileDownloaded(Event, tag="file.downloaded", frozen=True):
    """A file is complete in storage.

    Attributes:
        file_id: the file.
        filename: its sanitised, job-unique name.
        filepath: its key in storage (what the API shows as `filepath`).
        size: bytes stored.
        sha256: hex digest of the stored bytes.
        content_type: the server's Content-Type, when given.
    """

    file_id: FileId
    filename: str
    filepath: str
    size: int
    sha256: Sha256Hex
    content_type: str | None = None


class FileFailed(Event, tag="file.failed", frozen=True):
    """A file ended without its bytes.

    Attributes:
        file_id: the file.
        error: a message for people.
        permanent: False when retries ran out on a transient error.
        attempts: tries made.
    """

    file_id: FileId
    error: str
    permanent: bool = True
    attempts: int = 1


class JobFinished(Event, tag="job.finished", frozen=True):
    """The last file of a job reached a final state.

    Attributes:
        status: completed, partial, failed or cancelled.
        successful: files stored.
        failed: files that ended without bytes.
    """

    status: str
    successful: int = 0
    failed: int = 0


PipelineEvent = FileStarted | FileProgress | FileDownloaded | FileFailed | JobFinished
EVENT_DECODER = msgspec.json.Decoder(PipelineEvent)
ENCODER = msgspec.json.Encoder()
