"""Names of streams, groups and keys, the priority lanes and the consumer-name rule."""

from __future__ import annotations

import os
import socket
from enum import StrEnum

from shared.ids import JobId


class Lane(StrEnum):
    """Work lanes, highest first; priorities 1-10 map onto them."""

    HIGH = "high"  # priorities 8-10
    NORMAL = "normal"  # priorities 4-7
    LOW = "low"  # priorities 1-3


def lane_for(priority: int) -> Lane:
    if not 1 <= priority <= 10:
        raise ValueError(f"priority must be 1-10, got {priority}")
    if priority >= 8:
        return Lane.HIGH
    return Lane.NORMAL if priority >= 4 else Lane.LOW


def download_stream(lane: Lane) -> str:
    return f"downlink:downloads:{lane.value}"


def process_stream(lane: Lane) -> str:
    return f"downlink:process:{lane.value}"


def task_stream(queue: str, lane: Lane) -> str:
    """A user-defined task queue's lane: each queue has its own three."""
    return f"downlink:tasks:{queue}:{lane.value}"


def task_lanes(queue: str) -> tuple[str, ...]:
    """A task queue's lanes, highest first."""
    return tuple(task_stream(queue, lane) for lane in Lane)


# Highest first: a consumer with a free slot reads them in this order.
DOWNLOAD_LANES: tuple[str, ...] = tuple(download_stream(lane) for lane in Lane)
# CPU work has lanes of its own, so it never holds up downloads.
PROCESS_LANES: tuple[str, ...] = tuple(process_stream(lane) for lane in Lane)
EXPORT_STREAM = "downlink:exports"
EVENTS_STREAM = "downlink:events"
# The field of a stream entry holding its FastStream frame (body and headers).
DATA_FIELD = b"__data__"
DEAD_STREAM = "downlink:dead"
DELAYED_KEY = "downlink:delayed"
CANCEL_CHANNEL = "downlink:cancel"
EXPORT_CANCEL_CHANNEL = "downlink:exports:cancel"

DOWNLOADER_GROUP = "downloader"
PROCESSOR_GROUP = "processor"
EXPORTER_GROUP = "exporter"
TRACKER_GROUP = "tracker"
# Every task worker reads its queue's lanes in this group (the queues' streams differ).
TASKS_GROUP = "tasks"
TASK_CANCEL_CHANNEL = "downlink:tasks:cancel"
TASK_TYPES_KEY_PREFIX = "downlink:task-types:"

# Every group reads these streams; created up front so no entry published earlier is skipped.
GROUPS: dict[str, tuple[str, ...]] = {
    DOWNLOADER_GROUP: DOWNLOAD_LANES,
    PROCESSOR_GROUP: PROCESS_LANES,
    EXPORTER_GROUP: (EXPORT_STREAM,),
    TRACKER_GROUP: (EVENTS_STREAM,),
}


def cancelled_key(job_id: JobId) -> str:
    """Set while a job is cancelled, so queued messages of it are skipped."""
    return f"downlink:cancelled:{job_id}"


def done_key(file_id: str) -> str:
    """The FileDownloaded event of a finished file, so a redelivery is skipped."""
    return f"downlink:done:{file_id}"


def live_key(command_key: str) -> str:
    """Set with each publish of a command the reconciler keeps alive, by its command key (a
    download's file id, `process:<file id>`, `export:<export id>`...): a missing one after a
    Redis loss means the command is gone too, and the reconciler publishes it again."""
    return f"downlink:live:{command_key}"


def names_key(job_id: JobId) -> str:
    """Hash of filename -> file_id: the names taken inside one job."""
    return f"downlink:names:{job_id}"


def export_cancelled_key(export_id: str) -> str:
    """Set while an export is cancelled, so a queued or reclaimed build of it is skipped."""
    return f"downlink:export-cancelled:{export_id}"


def export_done_key(export_id: str) -> str:
    """The ExportReady event of a built archive, so a redelivered build is not redone."""
    return f"downlink:export-done:{export_id}"


def task_cancelled_key(task_id: str) -> str:
    """Set while a task is cancelled, so a queued or reclaimed run of it is skipped."""
    return f"downlink:task-cancelled:{task_id}"


def task_checkpoint_key(task_id: str) -> str:
    """A task's last `ctx.checkpoint` state (JSON), read when a try of it starts."""
    return f"downlink:task-checkpoint:{task_id}"


def task_types_key(consumer: str) -> str:
    """Hash of task name -> definition (policy, schema) a live task worker registered; it
    expires with the worker's heartbeat."""
    return f"{TASK_TYPES_KEY_PREFIX}{consumer}"


WORKERS_KEY_PREFIX = "downlink:workers:"


def worker_key(consumer: str) -> str:
    """Hash of a live worker process, kept fresh by its heartbeat; expires when the worker dies."""
    return f"{WORKERS_KEY_PREFIX}{consumer}"


def consumer_name() -> str:
    # A restarted process gets a new pid, hence a new consumer; its old one is reclaimed.
    return f"{socket.gethostname()}-{os.getpid()}"
