"""What the gateway answers, as the client reads it: typed Structs of the HTTP API (v1).

They mirror the gateway's response bodies but tolerate fields they do not know, and give
defaults to the optional ones, so a newer gateway does not break an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from shared.statuses import ExportStatus, FileStatus, JobStatus
from shared.task_types import TaskStatus

ArchiveFormat = Literal["zip", "tar.gz"]

# --- tasks ----------------------------------------------------------------------------------


class Enqueued(msgspec.Struct, frozen=True, kw_only=True):
    """The 202 answer to an enqueue (also to a repeated Idempotency-Key)."""

    task_id: str
    status: TaskStatus
    queue_position: int
    message: str = ""


class TaskProgress(msgspec.Struct, frozen=True, kw_only=True):
    done: float
    total: float | None = None
    message: str = ""


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/v1/tasks/{task_id}: where the task is, its tries, progress, result or error.

    `error` holds the worker's message, a blank line, then its traceback.
    """

    task_id: str
    task: str
    queue: str
    status: TaskStatus
    priority: int
    args: dict[str, Any]
    attempts: int
    run_at: datetime
    created_at: datetime
    progress: TaskProgress | None = None
    result: Any = None
    error: str | None = None
    worker: str | None = None
    trace_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    tasks: list[Task]
    page: int
    per_page: int
    total: int


class TaskType(msgspec.Struct, frozen=True, kw_only=True):
    """A task a live worker can run: its queue, policy and the JSON schema of its arguments."""

    name: str
    queue: str
    policy: dict[str, Any] = {}
    args_schema: dict[str, Any] = {}


class TaskTypeList(msgspec.Struct, frozen=True, kw_only=True):
    task_types: list[TaskType]


class EnqueuedBatch(msgspec.Struct, frozen=True, kw_only=True):
    tasks: list[Enqueued]


class TaskCancelled(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    status: TaskStatus


# --- downloads ------------------------------------------------------------------------------


class Submitted(msgspec.Struct, frozen=True, kw_only=True):
    """The 202 answer to a download job."""

    job_id: str
    status: JobStatus
    created_at: datetime
    queue_position: int
    estimated_time: float | None = None
    message: str = ""


class JobProgress(msgspec.Struct, frozen=True, kw_only=True):
    """File counts and bytes of one job; what `JobHandle.wait(progress=...)` is called with."""

    total: int
    completed: int
    failed: int
    percentage: float
    bytes_downloaded: int
    current_file: str | None = None

    @property
    def done(self) -> int:
        """Files that ended, stored or failed."""
        return self.completed + self.failed


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/v1/downloads/jobs/{job_id}: status and progress."""

    job_id: str
    status: JobStatus
    priority: int
    created_at: datetime
    updated_at: datetime
    progress: JobProgress
    metadata: dict[str, Any] = {}
    error: str | None = None


class StoredFile(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a job; `hash` is the hex SHA-256 of the stored bytes."""

    file_id: str
    url: str
    status: FileStatus
    filepath: str | None = None
    filename: str | None = None
    size: int | None = None
    hash: str | None = None
    downloaded_at: datetime | None = None
    error: str | None = None
    artifacts: dict[str, Any] | None = None


class ResultSummary(msgspec.Struct, frozen=True, kw_only=True):
    total_requested: int
    successful: int
    failed: int
    total_size: int


class JobExportRef(msgspec.Struct, frozen=True, kw_only=True):
    export_id: str
    status: ExportStatus
    download_url: str | None = None


class JobResult(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/v1/downloads/jobs/{job_id}/result: every file with where it is stored."""

    job_id: str
    status: JobStatus
    results: list[StoredFile]
    summary: ResultSummary
    export: JobExportRef | None = None
    composites: list[dict[str, Any]] = []


class ExportCreated(msgspec.Struct, frozen=True, kw_only=True):
    export_id: str
    status: ExportStatus
    file_count: int = 0
    total_bytes: int = 0


class ExportProgress(msgspec.Struct, frozen=True, kw_only=True):
    files_done: int = 0
    bytes_done: int = 0
    percentage: float = 0.0


class Export(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/v1/downloads/exports/{export_id}: how far it is built; `size` and `hash`
    once it is ready."""

    export_id: str
    status: ExportStatus
    format: ArchiveFormat
    file_count: int
    total_bytes: int = 0
    progress: ExportProgress = ExportProgress()
    size: int | None = None
    hash: str | None = None
    download_url: str | None = None
    error: str | None = None


# --- schedules ------------------------------------------------------------------------------

MissedPolicy = Literal["skip", "once"]


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/v1/schedules/{schedule_id}: a task enqueued on a cron expression (`cron`, in
    `timezone`) or a fixed interval (`every_s`); `next_run_at` is None while it is paused."""

    schedule_id: str
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    missed: MissedPolicy
    paused: bool
    created_at: datetime
    updated_at: datetime
    name: str | None = None
    cron: str | None = None
    timezone: str | None = None
    every_s: float | None = None
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    last_task_id: str | None = None
    workflow: bool = False  # a @workflow: each run starts a workflow
    last_workflow_id: str | None = None


class SchedulePage(msgspec.Struct, frozen=True, kw_only=True):
    schedules: list[Schedule]
    page: int
    per_page: int
    total: int


class ScheduleRun(msgspec.Struct, frozen=True, kw_only=True):
    """The 202 answer to a run now: the task it enqueued."""

    schedule_id: str
    task_id: str


class Purged(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a purge: how many pending tasks of the queue were cancelled."""

    queue: str
    purged: int


# --- workflows ------------------------------------------------------------------------------


class WorkflowSubmitted(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    status: str
    steps: int
    existing: bool = False


class WorkflowStep(msgspec.Struct, frozen=True, kw_only=True):
    """One step: its state (waiting, pending, running, expanded, completed, failed, skipped,
    cancelled), its task or job, tries, result or error and timings."""

    key: str
    kind: str
    task: str
    status: str
    after: list[str]
    owner: str | None = None
    task_id: str | None = None
    job_id: str | None = None
    attempts: int | None = None
    progress: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    launched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None


class Workflow(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/v1/workflows/{workflow_id}."""

    workflow_id: str
    status: str
    steps: list[WorkflowStep]
    created_at: datetime
    name: str | None = None
    allow_partial: bool = False
    args: dict[str, Any] = {}
    result: Any = None
    error: str | None = None
    trace_id: str | None = None
    finished_at: datetime | None = None
    artifacts: list[dict[str, Any]] = []

    def step(self, key: str) -> WorkflowStep:
        """The step named `key`; KeyError when there is none."""
        for found in self.steps:
            if found.key == key:
                return found
        raise KeyError(key)


class WorkflowSummary(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    status: str
    created_at: datetime
    name: str | None = None
    finished_at: datetime | None = None


class WorkflowPage(msgspec.Struct, frozen=True, kw_only=True):
    workflows: list[WorkflowSummary]
    page: int
    per_page: int
    total: int


class WorkflowCancelled(msgspec.Struct, frozen=True, kw_only=True):
    workflow_id: str
    status: str


# --- queues and dead letters (admin) ----------------------------------------------------------


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    """One consumer group on one stream: its backlog (`lag`) and work in flight (`pending`)."""

    stream: str
    group: str
    length: int
    pending: int
    lag: int | None = None
    consumers: int = 0
    oldest_pending_s: float | None = None


class QueueReport(msgspec.Struct, frozen=True, kw_only=True):
    """GET /api/v1/queues."""

    queues: list[QueueStats]
    dead_letters: int
    delayed_retries: int


class DeadLetterFilter(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Which dead letters a listing or bulk action means; fields left None match everything.

    `kind` is download, process, task, export, event or other; `error` is text in the error
    (any case); the times bound the letter's last failure.
    """

    kind: str | None = None
    stream: str | None = None
    error: str | None = None
    job_id: str | None = None
    task: str | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An entry of the dead-letter stream; `body` is the decoded command where there is one."""

    id: str
    stream: str
    group: str
    entry_id: str
    error: str
    attempts: int
    consumer: str
    failed_at: datetime
    body: Any
    kind: str = "other"
    job_id: str | None = None
    file_id: str | None = None
    url: str | None = None
    task_id: str | None = None
    task: str | None = None


class DeadLetterPage(msgspec.Struct, frozen=True, kw_only=True):
    dead_letters: list[DeadLetter]
    page: int
    per_page: int
    total: int


class Requeued(msgspec.Struct, frozen=True, kw_only=True):
    """A letter whose work is queued again, and the job and file, or task, it names."""

    id: str
    status: str = "requeued"
    job_id: str | None = None
    file_id: str | None = None
    task_id: str | None = None


class SkippedLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A selected letter left alone: 404 gone already, 409 its work may not run (again)."""

    id: str
    status_code: int
    reason: str


class LettersRetried(msgspec.Struct, frozen=True, kw_only=True):
    """A bulk re-drive; `remaining` matching letters were past the limit."""

    matched: int
    requeued: int
    letters: list[Requeued]
    skipped: list[SkippedLetter] = []
    remaining: int = 0


class LettersDiscarded(msgspec.Struct, frozen=True, kw_only=True):
    matched: int
    discarded: int
    ids: list[str]
    skipped: list[SkippedLetter] = []
    remaining: int = 0


class FailedFilesRetried(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    requeued: int
    file_ids: list[str]


class TaskRefused(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    reason: str


class TasksRetried(msgspec.Struct, frozen=True, kw_only=True):
    matched: int
    requeued: int
    task_ids: list[str]
    skipped: list[TaskRefused] = []
    remaining: int = 0
