"""Typed identifiers of users, jobs, files, exports, composites, artifacts, tasks and events."""

from __future__ import annotations

import uuid
from typing import NewType

UserId = NewType("UserId", str)
JobId = NewType("JobId", str)
FileId = NewType("FileId", str)
EventId = NewType("EventId", str)
ExportId = NewType("ExportId", str)
CompositeId = NewType("CompositeId", str)
ArtifactId = NewType("ArtifactId", str)
TaskId = NewType("TaskId", str)


def new_job_id() -> JobId:
    return JobId(str(uuid.uuid4()))


def new_file_id() -> FileId:
    return FileId(str(uuid.uuid4()))


def new_event_id() -> EventId:
    return EventId(str(uuid.uuid4()))


def new_task_id() -> TaskId:
    return TaskId(str(uuid.uuid4()))
