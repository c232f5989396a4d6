"""Commands carried by the work lanes and events carried by `downlink:events`.

Evolution rules (the wire outlives the code):
- A new field gets a default, so old payloads still decode.
- A tag is never retyped or reused; renaming a class never changes its tag.
- Unknown fields are tolerated on decode, so a newer producer never breaks an older consumer.
- HTTP bodies (each gateway area's schemas.py) are strict instead: forbid_unknown_fields=True.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from shared.composites import CompositeKind
from shared.ids import (
    ArtifactId,
    CompositeId,
    EventId,
    ExportId,
    FileId,
    JobId,
    TaskId,
    UserId,
)
from shared.statuses import JobStatus

Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


# --- commands: one consumer group each ----------------------------------------------------------


class Command(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of every imperative message on a work lane."""


class DownloadFile(Command, tag="download.file", frozen=True):
    """Fetch one URL into storage.

    Attributes:
        job_id: the job the work belongs to.
        file_id: the file row this download fills.
        user_id: the owner; stored paths live under the owner's area.
        url: http(s) URL to fetch.
        filename: the name the user asked for, or None to take it from the response.
        sha256: the expected hex digest, verified after the last byte.
        priority: 1-10, decides the lane.
    """

    job_id: JobId
    file_id: FileId
    user_id: UserId
    url: str
    filename: str | None = None
    sha256: Sha256Hex | None = None
    priority: int = 5


ProcessStep = Literal["metadata", "thumbnail", "cog"]


class ProcessFile(Command, tag="process.file", frozen=True):
    """Run per-file processing steps on a downloaded file.

    Attributes:
        job_id: the job the file belongs to.
        file_id: the downloaded file.
        user_id: the owner; artifacts are stored under the owner's area.
        filepath: the file's storage key.
        filename: the file's name in its job.
        steps: the steps asked for, in order.
        priority: the job's priority, 1-10, decides the lane.
    """

    job_id: JobId
    file_id: FileId
    user_id: UserId
    filepath: str
    filename: str
    steps: tuple[ProcessStep, ...]
    priority: int = 5


class BuildComposite(Command, tag="process.composite", frozen=True):
    """Build a job-level band composite once every named band is downloaded (fan-in).

    Attributes:
        job_id: the job.
        composite_id: the composite row this build fills.
        user_id: the owner.
        kind: "ndvi" (float32, (nir - red) / (nir + red)) or "rgb" (8-bit true colour).
        bands: band role ("red", "nir", "green", "blue") -> storage key of its file.
        bounds: optional WGS84 (west, south, east, north) to crop to.
        priority: the job's priority.
    """

    job_id: JobId
    composite_id: CompositeId
    user_id: UserId
    kind: CompositeKind
    bands: dict[str, str]
    bounds: tuple[float, float, float, float] | None = None
    priority: int = 5


ExportFormat = Literal["zip", "tar.gz"]


class ExportItem(msgspec.Struct, frozen=True, kw_only=True):
    """One stored object to put in an archive, with what the manifest says of it.

    Attributes:
        file_id: the file (or artifact) id.
        job_id: the job it belongs to.
        filepath: its storage key.
        arcname: its path inside the archive (unique, relative).
        size: bytes.
        sha256: hex digest of its bytes.
        url: the source URL (downloads) or None (artifacts).
        kind: "file" for a download, else the artifact kind ("thumbnail", "cog", "ndvi", ...).
        source_file_id: for an artifact, the file it was made from.
        metadata: the processor's metadata of the file when known (CRS, bounds, ...).
    """

    file_id: str
    job_id: JobId
    filepath: str
    arcname: str
    size: int
    sha256: str
    url: str | None = None
    kind: str = "file"
    source_file_id: str | None = None
    metadata: dict[str, Any] | None = None


class BuildExport(Command, tag="export.build", frozen=True):
    """Stream a selection of stored files into one archive.

    Attributes:
        export_id: the export row this build fills.
        user_id: the owner; the archive is stored under the owner's area.
        format: "zip" or "tar.gz".
        include_metadata: add manifest.json, SHA256SUMS and a STAC ItemCollection.
        items: what goes in, resolved and checked by the gateway.
        jobs: the jobs involved, as the manifest describes them (id, status, metadata, ...).
    """

    export_id: ExportId
    user_id: UserId
    format: ExportFormat
    include_metadata: bool = True
    items: tuple[ExportItem, ...] = ()
    jobs: tuple[dict[str, Any], ...] = ()


DOWNLOAD_DECODER = msgspec.json.Decoder(DownloadFile)
PROCESS_DECODER = msgspec.json.Decoder(ProcessFile | BuildComposite)
EXPORT_DECODER = msgspec.json.Decoder(BuildExport)


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
        started_at: when this try began, for a file that finished before its FileStarted was
            due (fast files send no start or progress events); None when one was sent.
        attempt: the try that stored it (1 for the first).
        worker: consumer name of the downloader.
    """

    file_id: FileId
    filename: str
    filepath: str
    size: int
    sha256: Sha256Hex
    content_type: str | None = None
    started_at: float | None = None
    attempt: int = 1
    worker: str = ""


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


class FileRetrying(Event, tag="file.retrying", frozen=True):
    """A try of a file failed and another one is scheduled.

    Attributes:
        file_id: the file.
        attempt: the try that failed (1 for the first).
        error: a message for people.
        retry_in_s: seconds until the next try is due.
    """

    file_id: FileId
    attempt: int
    error: str
    retry_in_s: float = 0.0


class JobFinished(Event, tag="job.finished", frozen=True):
    """The last file of a job reached a final state.

    Attributes:
        status: completed, partial, failed or cancelled.
        successful: files stored.
        failed: files that ended without bytes.
    """

    status: JobStatus
    successful: int = 0
    failed: int = 0


# --- processing: per-file steps and job-level composites --------------------------------------


ArtifactKind = Literal["metadata", "thumbnail", "cog", "ndvi", "rgb", "rgb_preview"]


class ArtifactCreated(Event, tag="artifact.created", frozen=True):
    """The processor made something from a job's files.

    Attributes:
        artifact_id: unique id; artifacts with a filepath download by this id.
        kind: what it is.
        file_id: the file it was made from (None for a composite).
        composite_id: the composite it belongs to (None for a per-file artifact).
        filepath: its storage key (None for "metadata", which is data only).
        size: bytes stored (0 without a filepath).
        sha256: hex digest of the stored bytes ("" without a filepath).
        content_type: e.g. image/png, image/tiff; application=geotiff; profile=cloud-optimized.
        metadata: the extracted metadata ("metadata" kind) or facts of the artifact.
    """

    artifact_id: ArtifactId
    kind: ArtifactKind
    file_id: FileId | None = None
    composite_id: CompositeId | None = None
    filepath: str | None = None
    size: int = 0
    sha256: str = ""
    content_type: str | None = None
    metadata: dict[str, Any] | None = None


class FileProcessed(Event, tag="file.processed", frozen=True):
    """Every step asked for a file has ended; each failed step is named with its error.

    Attributes:
        file_id: the file.
        errors: step -> message for the steps that failed (the download stays successful).
    """

    file_id: FileId
    errors: dict[str, str] = {}


class CompositeFinished(Event, tag="composite.finished", frozen=True):
    """A job-level composite ended.

    Attributes:
        composite_id: the composite.
        error: why it failed, or None when its artifacts were created.
    """

    composite_id: CompositeId
    error: str | None = None


# --- exports --------------------------------------------------------------------------------


class ExportEvent(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of facts about an export, which may span several jobs.

    Attributes:
        event_id: unique per event; consumers deduplicate on it.
        export_id: the export.
        at: Unix time (seconds).
    """

    event_id: EventId
    export_id: ExportId
    at: float


class ExportProgress(ExportEvent, tag="export.progress", frozen=True):
    """Throttled progress of an archive being built.

    Attributes:
        files_done: items written so far.
        bytes_done: source bytes read so far.
    """

    files_done: int
    bytes_done: int


class ExportReady(ExportEvent, tag="export.ready", frozen=True):
    """The archive is complete in storage.

    Attributes:
        filepath: its storage key.
        size: bytes.
        sha256: hex digest of the archive.
        file_count: items inside (metadata files not counted).
    """

    filepath: str
    size: int
    sha256: Sha256Hex
    file_count: int


class ExportFailed(ExportEvent, tag="export.failed", frozen=True):
    """The archive could not be built.

    Attributes:
        error: a message for people.
    """

    error: str


# --- user-defined tasks (services/tasks) -------------------------------------------------------


class RunTask(Command, tag="task.run", frozen=True):
    """Run one user-defined task with its arguments, on its queue's lanes.

    Attributes:
        task_id: the task row this run fills.
        user_id: the owner.
        task: the registered name (`@task(name=...)`).
        args: the arguments as JSON, checked against the task's schema at enqueue.
        queue: the queue the task was declared on.
        priority: 1-10, decides the lane.
        checkpoint: the task's last `ctx.checkpoint` state as PostgreSQL recorded it, when the
            reconciler publishes the task again from its row; a try prefers the worker's
            Redis copy (newer) and falls back on this one (a Redis loss). None: none saved.
        redriven_after: the tries made before the task's dead letter was re-driven; the tries
            after it get the task's whole `max_tries` again (numbered on from there).
        workflow_id, step: the workflow step this task is the work of (ctx.workflow_id).
    """

    task_id: TaskId
    user_id: UserId
    task: str
    args: dict[str, Any] = {}
    queue: str = "default"
    priority: int = 5
    checkpoint: Any = None
    redriven_after: int = 0
    workflow_id: str | None = None
    step: str | None = None


WorkCommand = DownloadFile | ProcessFile | BuildComposite | BuildExport | RunTask
WORK_COMMAND_DECODER = msgspec.json.Decoder(WorkCommand)
TASK_DECODER = msgspec.json.Decoder(RunTask)


class TaskEvent(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of facts about a user-defined task (no job: a task stands alone).

    Attributes:
        event_id: unique per event; consumers deduplicate on it.
        task_id: the task.
        at: Unix time (seconds).
    """

    event_id: EventId
    task_id: TaskId
    at: float


class TaskStarted(TaskEvent, tag="task.started", frozen=True):
    """A worker began a try of the task.

    Attributes:
        attempt: 1 for the first try (a crashed worker's try counts too).
        worker: consumer name of the worker.
    """

    attempt: int = 1
    worker: str = ""


class TaskProgress(TaskEvent, tag="task.progress", frozen=True):
    """What the task reported through `ctx.progress` (throttled).

    Attributes:
        done: units done so far.
        total: units in all, when the task knows.
        message: a line for people.
    """

    done: float
    total: float | None = None
    message: str = ""


class TaskSucceeded(TaskEvent, tag="task.succeeded", frozen=True):
    """The task returned; `result` is its return value as JSON.

    Attributes:
        result: the return value (None for a task that returns nothing).
        attempt: the try that succeeded.
        worker: consumer name of the worker.
        started_at: when this try began, for a task that ended before its TaskStarted was
            due (fast tasks send no start event); None when one was sent.
    """

    result: Any = None
    attempt: int = 1
    worker: str = ""
    started_at: float | None = None


class TaskRetrying(TaskEvent, tag="task.retrying", frozen=True):
    """A try failed and another one is scheduled with the task's backoff.

    Attributes:
        attempt: the try that failed.
        error: the exception and its traceback.
        retry_in_s: seconds until the next try is due.
        worker: consumer name of the worker.
    """

    attempt: int
    error: str
    retry_in_s: float = 0.0
    worker: str = ""


class TaskFailed(TaskEvent, tag="task.failed", frozen=True):
    """The task ended in error, for good.

    Attributes:
        error: the exception and its traceback.
        attempts: tries made.
        worker: consumer name of the worker.
        dead_lettered: True when its tries ran out or its workers kept dying (status dead, in
            the dead letters, worth a re-drive); False for a `Permanent` error or arguments
            that no longer fit (status failed, acknowledged: running it again fails the same).
    """

    error: str
    attempts: int = 1
    worker: str = ""
    dead_lettered: bool = True


class TaskEnqueued(TaskEvent, tag="task.enqueued", frozen=True):
    """A running task queued a follow-up (`ctx.enqueue`); the tracker writes it as if enqueued
    over HTTP by the parent's owner. `task_id` is the new task's, chosen by the worker.

    Attributes:
        parent_id: the task that enqueued it.
        user_id: the owner (the parent's).
        task: the registered name.
        args: the arguments, checked by the worker against the task's signature.
        queue: the queue the task is declared on.
        priority: 1-10, decides the lane.
        run_at: Unix time before which it must not run; None to run at once.
        unique: the task's type allows one open task per user with the same arguments.
        trace_headers: the parent's trace context (`traceparent`): the child's trace goes on.
    """

    parent_id: TaskId
    user_id: UserId
    task: str
    args: dict[str, Any] = {}
    queue: str = "default"
    priority: int = 5
    run_at: float | None = None
    unique: bool = False
    trace_headers: dict[str, str] = {}


class TaskCheckpointed(TaskEvent, tag="task.checkpointed", frozen=True):
    """A running task saved where it was (`ctx.checkpoint`); the tracker keeps the latest.

    Attributes:
        state: the saved state as JSON.
        attempt: the try that saved it.
    """

    state: Any = None
    attempt: int = 1


PipelineEvent = (
    FileStarted
    | FileProgress
    | FileDownloaded
    | FileFailed
    | FileRetrying
    | JobFinished
    | ArtifactCreated
    | FileProcessed
    | CompositeFinished
    | ExportProgress
    | ExportReady
    | ExportFailed
    | TaskStarted
    | TaskProgress
    | TaskSucceeded
    | TaskRetrying
    | TaskFailed
    | TaskEnqueued
    | TaskCheckpointed
)
EVENT_DECODER = msgspec.json.Decoder(PipelineEvent)
ENCODER = msgspec.json.Encoder()
