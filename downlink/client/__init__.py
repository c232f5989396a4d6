"""Downlink's HTTP API from Python: `Client` (asyncio) and its twin `SyncClient`.

The logic is written once, without I/O: tasks.py and downloads.py are operations made of the
steps in protocol.py, which transport.py performs over httpx, async or blocking. models.py
types the answers, errors.py the refusals, handles.py what a task or job handle holds.
"""

from __future__ import annotations

from downlink.client.asynchronous import Client, JobHandle, TaskHandle
from downlink.client.errors import (
    Conflict,
    ConnectionFailed,
    DownlinkError,
    ExportFailedError,
    Forbidden,
    Invalid,
    NotFound,
    TaskCancelledError,
    TaskFailedError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from downlink.client.models import Job, JobProgress, JobResult, StoredFile, Task, TaskPage, TaskType
from downlink.client.synchronous import SyncClient, SyncJobHandle, SyncTaskHandle

__all__ = [
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DownlinkError",
    "ExportFailedError",
    "Forbidden",
    "Invalid",
    "Job",
    "JobHandle",
    "JobProgress",
    "JobResult",
    "NotFound",
    "StoredFile",
    "SyncClient",
    "SyncJobHandle",
    "SyncTaskHandle",
    "Task",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskHandle",
    "TaskPage",
    "TaskType",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
]
