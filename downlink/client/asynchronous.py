"""`Client`: Downlink's HTTP API from asyncio code, with handles on the tasks and jobs it made.

async with downlink.Client() as dl:  # DOWNLINK_URL, DOWNLINK_TOKEN
    task = await dl.enqueue("create_thumbnail", source="in.png", target="out.jpg")
    print(await task.result(timeout=60))
"""

# ruff: noqa: ASYNC109 - `timeout=` as on SyncClient (and Celery's AsyncResult.get): the
# wait is bounded by a deadline the protocol checks between steps, not by cancelling an await.

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from downlink.client import admin, downloads, protocol, schedules, tasks, workflows
from downlink.client.handles import JobRef, TaskRef
from downlink.client.transport import run_async

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


class Client:
    """An async client of one gateway, as one user (the token's); close it, or use `async with`.

    `url` and `token` default to DOWNLINK_URL and DOWNLINK_TOKEN; `timeout_s` bounds each
    request (waiting for a task or a job is bounded by the wait's own `timeout`).
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout_s: float = 30.0
    ) -> None:
        base_url, headers = protocol.endpoint(url, token)
        self.url = base_url
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, operation: Operation[T]) -> T:
        return await run_async(self._http, operation)

    # --- tasks ------------------------------------------------------------------------------

    async def enqueue(
        self,
        task: str,
        /,
        _priority: int | None = None,
        _defer_s: float | None = None,
        _run_at: datetime | None = None,
        _idempotency_key: str | None = None,
        **args: Any,
    ) -> TaskHandle:
        """Queue `task` with `args` (checked against its signature: Invalid names a bad one)."""
        enqueued = await self._run(
            tasks.enqueue(
                task,
                args,
                priority=_priority,
                defer_s=_defer_s,
                run_at=_run_at,
                idempotency_key=_idempotency_key,
            )
        )
        return TaskHandle(self, enqueued)

    async def enqueue_many(
        self, task: str, args: Sequence[Mapping[str, Any]], *, priority: int | None = None
    ) -> list[TaskHandle]:
        """Queue one `task` per item of `args`, 1000 to a request; handles in the same order."""
        enqueued = await self._run(tasks.enqueue_many(task, args, priority=priority))
        return [TaskHandle(self, one) for one in enqueued]

    def task(self, task_id: str) -> TaskHandle:
        """A handle on a task queued earlier (no request is made)."""
        return TaskHandle(self, task_id)

    async def get_task(self, task_id: str) -> Task:
        return await self._run(tasks.get_task(task_id))

    async def task_result(self, task_id: str, *, timeout: float | None = 60.0) -> Any:
        """The task's result once it completes (see TaskHandle.result)."""
        return await self._run(tasks.task_result(task_id, timeout))

    async def cancel_task(self, task_id: str) -> TaskCancelled:
        return await self._run(tasks.cancel_task(task_id))

    async def tasks(
        self,
        *,
        task: str | None = None,
        status: str | None = None,
        page: int = 1,
        per_page: int = 20,
    ) -> TaskPage:
        """One page of this user's tasks, newest first."""
        return await self._run(
            tasks.list_tasks(task=task, status=status, page=page, per_page=per_page)
        )

    async def task_types(self) -> list[TaskType]:
        """What the live workers can run, each with its argument schema."""
        return await self._run(tasks.task_types())

    # --- schedules --------------------------------------------------------------------------

    async def schedule(
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
        return await self._run(
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

    async def schedules(self, *, page: int = 1, per_page: int = 20) -> SchedulePage:
        """One page of this user's schedules, newest first."""
        return await self._run(schedules.list_schedules(page=page, per_page=per_page))

    async def get_schedule(self, schedule_id: str) -> Schedule:
        return await self._run(schedules.get_schedule(schedule_id))

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        return await self._run(schedules.pause_schedule(schedule_id))

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Fire it again from its next run after now (the runs while paused are not made up)."""
        return await self._run(schedules.resume_schedule(schedule_id))

    async def run_schedule(self, schedule_id: str) -> TaskHandle:
        """Enqueue one run of the schedule now; a handle on its task."""
        ran = await self._run(schedules.run_schedule(schedule_id))
        return TaskHandle(self, ran.task_id)

    async def delete_schedule(self, schedule_id: str) -> None:
        await self._run(schedules.delete_schedule(schedule_id))

    async def purge(self, queue: str) -> int:
        """Admin: cancel every pending task of `queue` (running ones go on); how many."""
        purged = await self._run(schedules.purge(queue))
        return purged.purged

    # --- workflows --------------------------------------------------------------------------

    async def submit_workflow(
        self,
        flow: Block | str,
        /,
        args: Mapping[str, Any] | None = None,
        *,
        allow_partial: bool = False,
        idempotency_key: str | None = None,
    ) -> WorkflowSubmitted:
        """Run `flow` (a block of `chain`, `group`, `chord`, `Step`) or the `@workflow` of
        that name with `args`; with `allow_partial`, a failed step's dependents still run."""
        return await self._run(
            workflows.submit_workflow(
                flow, args, allow_partial=allow_partial, idempotency_key=idempotency_key
            )
        )

    async def get_workflow(self, workflow_id: str) -> Workflow:
        return await self._run(workflows.get_workflow(workflow_id))

    async def wait_workflow(self, workflow_id: str, timeout: float | None = None) -> Workflow:
        """The workflow once it ended (completed, partial, failed or cancelled)."""
        return await self._run(workflows.wait_workflow(workflow_id, timeout))

    async def workflows(
        self, *, status: str | None = None, page: int = 1, per_page: int = 20
    ) -> WorkflowPage:
        return await self._run(
            workflows.list_workflows(status=status, page=page, per_page=per_page)
        )

    async def cancel_workflow(self, workflow_id: str) -> WorkflowCancelled:
        return await self._run(workflows.cancel_workflow(workflow_id))

    async def export_workflow(self, workflow_id: str, export_format: str = "zip") -> ExportCreated:
        """Queue one archive of the workflow's artifacts and downloaded files (with STAC)."""
        return await self._run(workflows.export_workflow(workflow_id, export_format))

    # --- downloads --------------------------------------------------------------------------

    async def download(
        self,
        urls: Sequence[str],
        *,
        priority: int = 5,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> JobHandle:
        """Submit a download job; `options` are the other fields of the body (`files`,
        `metadata`, `process`, `composites`, `export`, `timeout_s`)."""
        submitted = await self._run(
            downloads.submit(
                urls, priority=priority, options=options, idempotency_key=idempotency_key
            )
        )
        return JobHandle(self, submitted)

    def job(self, job_id: str) -> JobHandle:
        """A handle on a job submitted earlier (no request is made)."""
        return JobHandle(self, job_id)

    async def get_job(self, job_id: str) -> Job:
        return await self._run(downloads.get_job(job_id))

    async def wait_job(
        self, job_id: str, *, progress: ProgressCallback | None = None, timeout: float | None = None
    ) -> Job:
        return await self._run(downloads.wait_job(job_id, progress, timeout))

    async def job_result(self, job_id: str) -> JobResult:
        return await self._run(downloads.job_result(job_id))

    async def cancel_job(self, job_id: str, *, reason: str | None = None) -> Job:
        return await self._run(downloads.cancel_job(job_id, reason))

    async def export_job(
        self,
        job_id: str,
        archive_format: ArchiveFormat = "zip",
        path: str | Path | None = None,
        *,
        include_metadata: bool = True,
        timeout: float | None = None,
    ) -> Path:
        return await self._run(
            downloads.export_job(
                job_id,
                archive_format,
                None if path is None else Path(path),
                include_metadata=include_metadata,
                timeout_s=timeout,
            )
        )

    # --- queues and dead letters (admin), retries of failed work -----------------------------

    async def queues(self) -> QueueReport:
        """Length, pending, lag, consumers and oldest pending of every stream and group (admin)."""
        return await self._run(admin.queues())

    async def dead_letters(
        self, letter_filter: DeadLetterFilter | None = None, *, page: int = 1, per_page: int = 20
    ) -> DeadLetterPage:
        """One page of the dead letters matching `letter_filter`, newest first (admin)."""
        return await self._run(admin.dead_letters(letter_filter, page=page, per_page=per_page))

    async def retry_dead_letter(self, letter_id: str) -> Requeued:
        return await self._run(admin.retry_dead_letter(letter_id))

    async def retry_dead_letters(
        self,
        ids: Sequence[str] | None = None,
        letter_filter: DeadLetterFilter | None = None,
        *,
        limit: int = 1000,
    ) -> LettersRetried:
        """Re-drive the letters `ids`, else every one matching `letter_filter` (admin)."""
        return await self._run(admin.retry_dead_letters(ids, letter_filter, limit=limit))

    async def discard_dead_letters(
        self,
        ids: Sequence[str] | None = None,
        letter_filter: DeadLetterFilter | None = None,
        *,
        limit: int = 1000,
    ) -> LettersDiscarded:
        """Remove the letters `ids`, else every one matching `letter_filter` (admin)."""
        return await self._run(admin.discard_dead_letters(ids, letter_filter, limit=limit))

    async def retry_failed_files(self, job_id: str) -> FailedFilesRetried:
        """Download every failed file of one's job again."""
        return await self._run(admin.retry_failed_files(job_id))

    async def retry_tasks(
        self, task: str | None = None, statuses: Sequence[str] | None = None, *, limit: int = 1000
    ) -> TasksRetried:
        """Run one's failed and dead tasks (of `task`; in `statuses`) again."""
        return await self._run(admin.retry_tasks(task, statuses, limit=limit))


class TaskHandle(TaskRef["Client"]):
    """A task this client queued (or named); `task_id`, `queue_position`, `enqueued`."""

    async def status(self) -> Task:
        """The task as the gateway has it now."""
        return await self._client.get_task(self.task_id)

    async def result(self, timeout: float | None = 60.0) -> Any:
        """Its result once it completes.

        Raises TaskFailedError (with the worker's error and traceback) when it failed,
        TaskCancelledError when it was cancelled, TimeoutError after `timeout` seconds.
        """
        return await self._client.task_result(self.task_id, timeout=timeout)

    async def cancel(self) -> TaskCancelled:
        return await self._client.cancel_task(self.task_id)


class JobHandle(JobRef["Client"]):
    """A download job this client submitted (or named); `job_id`, `submitted`."""

    async def status(self) -> Job:
        return await self._client.get_job(self.job_id)

    async def wait(
        self, progress: ProgressCallback | None = None, timeout: float | None = None
    ) -> Job:
        """Until the job ends; `progress` is called with its JobProgress each time it moves.

        Follows the job's event stream, polling instead where it cannot be read.
        """
        return await self._client.wait_job(self.job_id, progress=progress, timeout=timeout)

    async def result(self) -> JobResult:
        """Every file with its status, stored path, size and SHA-256."""
        return await self._client.job_result(self.job_id)

    async def cancel(self, reason: str | None = None) -> Job:
        return await self._client.cancel_job(self.job_id, reason=reason)

    async def export(
        self,
        archive_format: ArchiveFormat = "zip",
        path: str | Path | None = None,
        *,
        include_metadata: bool = True,
        timeout: float | None = None,
    ) -> Path:
        """Archive the job's files (zip or tar.gz), wait for it, and save it to `path`."""
        return await self._client.export_job(
            self.job_id,
            archive_format,
            path,
            include_metadata=include_metadata,
            timeout=timeout,
        )
