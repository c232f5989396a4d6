"""Downlink for your own code: declare tasks that Downlink's workers run.

    from downlink import task, Context, Permanent

    @task(name="create_thumbnail", max_tries=3, timeout_s=300, backoff="linear")
    async def create_thumbnail(image_id: int, ctx: Context) -> dict[str, int]:
        ctx.progress(0, 1, "resizing")
        ...

Chain them into workflows (`chain`, `group`, `chord`, `after=`, `@workflow`: docs/workflows.md).
Run them with `downlink worker --tasks myapp.tasks`; enqueue them and follow them with
`Client` (asyncio) or `SyncClient` (docs/client.md), or over HTTP (POST /api/v1/tasks).
A thin facade: the machinery lives in services.tasks and shared, the client in downlink.client.
"""

from __future__ import annotations

from downlink.client import (
    Client,
    Conflict,
    ConnectionFailed,
    DownlinkError,
    ExportFailedError,
    Forbidden,
    Invalid,
    JobHandle,
    NotFound,
    SyncClient,
    SyncJobHandle,
    SyncTaskHandle,
    TaskCancelledError,
    TaskFailedError,
    TaskHandle,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from downlink.client.models import Job, JobProgress, JobResult, StoredFile, Task, TaskPage, TaskType
from services.tasks.canvas import (
    Canvas,
    Step,
    chain,
    chord,
    download,
    export,
    group,
    step,
    workflow,
)
from services.tasks.context import Context
from services.tasks.definitions import Permanent, TaskDefinition, TaskPolicy, task

__all__ = [
    "Canvas",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Context",
    "DownlinkError",
    "ExportFailedError",
    "Forbidden",
    "Invalid",
    "Job",
    "JobHandle",
    "JobProgress",
    "JobResult",
    "NotFound",
    "Permanent",
    "Step",
    "StoredFile",
    "SyncClient",
    "SyncJobHandle",
    "SyncTaskHandle",
    "Task",
    "TaskCancelledError",
    "TaskDefinition",
    "TaskFailedError",
    "TaskHandle",
    "TaskPage",
    "TaskPolicy",
    "TaskType",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "chain",
    "chord",
    "download",
    "export",
    "group",
    "step",
    "task",
    "workflow",
]
