"""HTTP bodies of /api/v1/executions and /workers, and their mapping from the record."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from shared.workers import WorkerInfo

if TYPE_CHECKING:
    from services.gateway.executions.queries import ExecutionPage


class ExecutionView(msgspec.Struct, frozen=True, kw_only=True):
    """One try of one task, as GET /api/v1/executions shows it.

    `subject_id` is what the try worked on: the file, composite or export id.
    """

    id: int
    task: str
    status: str
    attempt: int
    job_id: str | None
    file_id: str | None
    subject_id: str
    worker: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    error: str | None


class ExecutionListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One page of the execution history, newest first."""

    executions: list[ExecutionView]
    page: int
    per_page: int
    total: int


class WorkerListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """Every live service process; one that stopped heartbeating is gone within 30 s."""

    workers: list[WorkerInfo]


def execution_list_response(page: ExecutionPage) -> ExecutionListResponse:
    # Field for field the record: the response is what the API documents.
    return msgspec.convert(page, ExecutionListResponse, from_attributes=True)
