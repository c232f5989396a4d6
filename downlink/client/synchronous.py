"""`SyncClient`: the twin of `Client` for code without an event loop (scripts, Django, the CLI).

with downlink.SyncClient() as dl:  # DOWNLINK_URL, DOWNLINK_TOKEN
    task = dl.enqueue("create_thumbnail", source="in.png", target="out.jpg")
    print(task.result(timeout=60))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from downlink.client import admin, downloads, protocol, schedules, tasks, workflows
from downlink.client.handles import JobRef, TaskRef
from downlink.client.transport import run_sync

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime
    from types import TracebackType

    from downlink.client.downloads import ProgressCallback
    from downlink.client.models import (
        ArchiveFormat,
        DeadLetterFilter,
        DeadLetterPage,
        ExportCreated,
        FailedFilesRetried,
        Job,
        JobResult,
        LettersDiscarded,
        LettersRetried,
        MissedPolicy,
        QueueReport,
        Requeued,
        Schedule,
        SchedulePage,
        Task,
        TaskCancelled,
        TaskPage,
        TasksRetried,
        TaskType,
        Workflow,
        WorkflowCancelled,
        WorkflowPage,
        WorkflowSubmitted,
    )
    from downlink.client.protocol import Operation
    from downlink.client.workflows import Block


class SyncClient:
    """A blocking client of one gateway, as one user (the token's); close it, or use `with`.

    `url` and `token` default to DOWNLINK_URL and DOWNLINK_TOKEN; `timeout_s` bounds each
    request (waiting for a task or a job is bounded by the wait's own `timeout`).
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout_s: float = 30.0
    ) -> None:
        base_url, headers = protocol.endpoint(url, token)
        self.url = base_url
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, operation: Operation[T]) -> T:
        return run_sync(self._http, operation)

    # --- tasks ------------------------------------------------------------------------------

    def enqueue(
        self,
        task: str,
        /,
        _priority: int | None = None,
        _defer_s: float | None = None,
        _run_at: datetime | None = None,
        _idempotency_key: str | None = None,
        **args: Any,
    ) -> SyncTaskHandle:
        """Queue `task` with `args` (checked against its signature: Invalid names a bad one)."""
        enqueued = self._run(
            tasks.enqueue(
                task,
                args,
                priority=_priority,
                defer_s=_defer_s,
                run_at=_run_at,
                idempotency_key=_idempotency_key,
            )
        )
        return SyncTaskHandle(self, enqueued)

    def enqueue_many(
        self, task: str, args: Sequence[Mapping[str, Any]], *, priority: int | None = None
    ) -> list[SyncTaskHandle]:
        """Queue one `task` per item of `args`, 1000 to a request; handles in the same order."""
        enqueued = self._run(tasks.enqueue_many(task, args, priority=priority))
        return [SyncTaskHandle(self, one) for one in enqueued]

    def task(self, task_id: str) -> SyncTaskHandle:
        """A handle on a task queued earlier (no request is made)."""
        return SyncTaskHandle(self, task_id)

    def get_task(self, task_id: str) -> Task:
        return self._run(tasks.get_task(task_id))

    def task_result(self, task_id: str, *, timeout: float | None = 60.0) -> Any:
        """The task's result once it completes (see SyncTaskHandle.result)."""
        return self._run(tasks.task_result(task_id, timeout))

    def cancel_task(self, task_id: str) -> TaskCancelled:
        return self._run(tasks.cancel_task(task_id))

    def tasks(
        self,
        *,
        task: str | None = None,
        status: str | None = None,
        page: int = 1,
        per_page: int = 20,
    ) -> TaskPage:
        """One page of this user's tasks, newest first."""
        return self._run(tasks.list_tasks(task=task, status=status, page=page, per_page=per_page))

    def task_types(self) -> list[TaskType]:
        """What the live workers can run, each with its argument schema."""
        return self._run(tasks.task_types())

    # --- schedules --------------------------------------------------------------------------

    def schedule(
        self,
        when: str | float,
        task: str,
        /,
        args: Mapping[str, Any] | None = None,
        *,
        timezone: str | None = None,
        priority: int | None = None,
        missed: MissedPolicy = "skip",
        name: str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Enqueue `task` with `args` on a cron expression (`"*/30 * * * *"`, in `timezone`,
        UTC by default) or every `when` seconds; `missed` says what becomes of runs that fell
        due while no scheduler ran: `"skip"` them, or fire `"once"` for all of them."""
        return self._run(
            schedules.create_schedule(
                when,
                task,
                args or {},
                timezone=timezone,
                priority=priority,
                missed=missed,
                name=name,
                paused=paused,
            )
        )

    def schedules(self, *, page: int = 1, per_page: int = 20) -> SchedulePage:
        """One page of this user's schedules, newest first."""
        return self._run(schedules.list_schedules(page=page, per_page=per_page))

    def get_schedule(self, schedule_id: str) -> Schedule:
        return self._run(schedules.get_schedule(schedule_id))

    def pause_schedule(self, schedule_id: str) -> Schedule:
        return self._run(schedules.pause_schedule(schedule_id))

    def resume_schedule(self, schedule_id: str) -> Schedule:
        """Fire it again from its next run after now (the runs while paused are not made up)."""
        return self._run(schedules.resume_schedule(schedule_id))

    def run_schedule(self, schedule_id: str) -> SyncTaskHandle:
        """Enqueue one run of the schedule now; a handle on its task."""
        ran = self._run(schedules.run_schedule(schedule_id))
        return SyncTaskHandle(self, ran.task_id)

    def delete_schedule(self, schedule_id: str) -> None:
        self._run(schedules.delete_schedule(schedule_id))

    def purge(self, queue: str) -> int:
        """Admin: cancel every pending task of `queue` (running ones go on); how many."""
        purged = self._run(schedules.purge(queue))
        return purged.purged

    # --- downloads --------------------------------------------------------------------------

    # --- workflows --------------------------------------------------------------------------

    def submit_workflow(
        self,
        flow: Block | str,
        /,
        args: Mapping[str, Any] | None = None,
        *,
        allow_partial: bool = False,
        idempotency_key: str | None = None,
    ) -> WorkflowSubmitted:
        """As Client.submit_workflow."""
        return self._run(
            workflows.submit_workflow(
                flow, args, allow_partial=allow_partial, idempotency_key=idempotency_key
            )
        )

    def get_workflow(self, workflow_id: str) -> Workflow:
        return self._run(workflows.get_workflow(workflow_id))

    def wait_workflow(self, workflow_id: str, timeout: float | None = None) -> Workflow:
        return self._run(workflows.wait_workflow(workflow_id, timeout))

    def workflows(
        self, *, status: str | None = None, page: int = 1, per_page: int = 20
    ) -> WorkflowPage:
        return self._run(workflows.list_workflows(status=status, page=page, per_page=per_page))

    def cancel_workflow(self, workflow_id: str) -> WorkflowCancelled:
        return self._run(workflows.cancel_workflow(workflow_id))

    def export_workflow(self, workflow_id: str, export_format: str = "zip") -> ExportCreated:
        return self._run(workflows.export_workflow(workflow_id, export_format))

    def download(
        self,
        urls: Sequence[str],
        *,
        priority: int = 5,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> SyncJobHandle:
        """Submit a download job; `options` are the other fields of the body (`files`,
        `metadata`, `process`, `composites`, `export`, `timeout_s`)."""
        submitted = self._run(
            downloads.submit(
                urls, priority=priority, options=options, idempotency_key=idempotency_key
            )
        )
        return SyncJobHandle(self, submitted)

    def job(self, job_id: str) -> SyncJobHandle:
        """A handle on a job submitted earlier (no request is made)."""
        return SyncJobHandle(self, job_id)

    def get_job(self, job_id: str) -> Job:
        return self._run(downloads.get_job(job_id))

    def wait_job(
        self, job_id: str, *, progress: ProgressCallback | None = None, timeout: float | None = None
    ) -> Job:
        return self._run(downloads.wait_job(job_id, progress, timeout))

    def job_result(self, job_id: str) -> JobResult:
        return self._run(downloads.job_result(job_id))

    def cancel_job(self, job_id: str, *, reason: str | None = None) -> Job:
        return self._run(downloads.cancel_job(job_id, reason))

    def export_job(
        self,
        job_id: str,
        archive_format: ArchiveFormat = "zip",
        path: str | Path | None = None,
        *,
        include_metadata: bool = True,
        timeout: float | None = None,
    ) -> Path:
        return self._run(
            downloads.export_job(
                job_id,
                archive_format,
                None if path is None else Path(path),
                include_metadata=include_metadata,
                timeout_s=timeout,
            )
        )

    # --- queues and dead letters (admin), retries of failed work -----------------------------

    def queues(self) -> QueueReport:
        """Length, pending, lag, consumers and oldest pending of every stream and group (admin)."""
        return self._run(admin.queues())

    def dead_letters(
        self, letter_filter: DeadLetterFilter | None = None, *, page: int = 1, per_page: int = 20
    ) -> DeadLetterPage:
        """One page of the dead letters matching `letter_filter`, newest first (admin)."""
        return self._run(admin.dead_letters(letter_filter, page=page, per_page=per_page))

    def retry_dead_letter(self, letter_id: str) -> Requeued:
        return self._run(admin.retry_dead_letter(letter_id))

    def retry_dead_letters(
        self,
        ids: Sequence[str] | None = None,
        letter_filter: DeadLetterFilter | None = None,
        *,
        limit: int = 1000,
    ) -> LettersRetried:
        """Re-drive the letters `ids`, else every one matching `letter_filter` (admin)."""
        return self._run(admin.retry_dead_letters(ids, letter_filter, limit=limit))

    def discard_dead_letters(
        self,
        ids: Sequence[str] | None = None,
        letter_filter: DeadLetterFilter | None = None,
        *,
        limit: int = 1000,
    ) -> LettersDiscarded:
        """Remove the letters `ids`, else every one matching `letter_filter` (admin)."""
        return self._run(admin.discard_dead_letters(ids, letter_filter, limit=limit))

    def retry_failed_files(self, job_id: str) -> FailedFilesRetried:
        """Download every failed file of one's job again."""
        return self._run(admin.retry_failed_files(job_id))

    def retry_tasks(
        self, task: str | None = None, statuses: Sequence[str] | None = None, *, limit: int = 1000
    ) -> TasksRetried:
        """Run one's failed and dead tasks (of `task`; in `statuses`) again."""
        return self._run(admin.retry_tasks(task, statuses, limit=limit))


class SyncTaskHandle(TaskRef["SyncClient"]):
    """A task this client queued (or named); `task_id`, `queue_position`, `enqueued`."""

    def status(self) -> Task:
        """The task as the gateway has it now."""
        return self._client.get_task(self.task_id)

    def result(self, timeout: float | None = 60.0) -> Any:
        """Its result once it completes.

        Raises TaskFailedError (with the worker's error and traceback) when it failed,
        TaskCancelledError when it was cancelled, TimeoutError after `timeout` seconds.
        """
        return self._client.task_result(self.task_id, timeout=timeout)

    def cancel(self) -> TaskCancelled:
        return self._client.cancel_task(self.task_id)


class SyncJobHandle(JobRef["SyncClient"]):
    """A download job this client submitted (or named); `job_id`, `submitted`."""

    def status(self) -> Job:
        return self._client.get_job(self.job_id)

    def wait(self, progress: ProgressCallback | None = None, timeout: float | None = None) -> Job:
        """Until the job ends; `progress` is called with its JobProgress each time it moves.

        Follows the job's event stream, polling instead where it cannot be read.
        """
        return self._client.wait_job(self.job_id, progress=progress, timeout=timeout)

    def result(self) -> JobResult:
        """Every file with its status, stored path, size and SHA-256."""
        return self._client.job_result(self.job_id)

    def cancel(self, reason: str | None = None) -> Job:
        return self._client.cancel_job(self.job_id, reason=reason)

    def export(
        self,
        archive_format: ArchiveFormat = "zip",
        path: str | Path | None = None,
        *,
        include_metadata: bool = True,
        timeout: float | None = None,
    ) -> Path:
        """Archive the job's files (zip or tar.gz), wait for it, and save it to `path`."""
        return self._client.export_job(
            self.job_id,
            archive_format,
            path,
            include_metadata=include_metadata,
            timeout=timeout,
        )
