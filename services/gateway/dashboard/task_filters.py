"""The tasks and workflows lists' filters, read from the query string; a bad value is a 400
naming its field, as the jobs list's are."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.dashboard.filters import moment_field
from services.gateway.errors import InvalidRequest
from services.gateway.tasks.selection import TaskFilter
from services.gateway.workflows.records import WorkflowStatus
from shared.task_types import TaskStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

_MAX_NAME = 200


def parse_task_filter(params: Mapping[str, str], *, admin: bool) -> TaskFilter:
    """The filter of the tasks list's query string; the user filter is for admins only."""
    cleaned = {name: value.strip() for name, value in params.items() if value.strip()}
    status = cleaned.get("status")
    if status is not None and status not in set(TaskStatus):
        raise InvalidRequest(f"status: {status!r} is not one of {', '.join(TaskStatus)}")
    task = cleaned.get("task")
    if task is not None and len(task) > _MAX_NAME:
        raise InvalidRequest(f"task: at most {_MAX_NAME} characters")
    user = cleaned.get("user")
    if user is not None and not admin:
        raise InvalidRequest("user: only admins filter by user")
    return TaskFilter(
        task=task,
        status=TaskStatus(status) if status else None,
        since=moment_field("since", cleaned.get("since")),
        until=moment_field("until", cleaned.get("until")),
        user=user,
    )


def parse_workflow_status(value: str | None) -> WorkflowStatus | None:
    """The workflows list's status filter; empty lists every status."""
    if not value or not value.strip():
        return None
    try:
        return WorkflowStatus(value.strip())
    except ValueError:
        raise InvalidRequest(
            f"status: {value!r} is not one of {', '.join(WorkflowStatus)}"
        ) from None
