"""Typed identifiers of users, jobs, files and events, and their generators."""

from __future__ import annotations

import uuid
from typing import NewType

UserId = NewType("UserId", str)
JobId = NewType("JobId", str)
FileId = NewType("FileId", str)
EventId = NewType("EventId", str)


def new_job_id() -> JobId:
    return JobId(str(uuid.uuid4()))


def new_file_id() -> FileId:
    return FileId(str(uuid.uuid4()))


def new_event_id() -> EventId:
    return EventId(str(uuid.uuid4()))
