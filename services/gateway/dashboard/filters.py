"""The jobs list's filters, read from the query string or a bulk form; a bad value is a 400
naming its field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from services.gateway.errors import InvalidRequest
from services.gateway.jobs.selection import JobFilter
from shared.statuses import JobStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

_MAX_TEXT = 200


def parse_job_filter(params: Mapping[str, str], *, admin: bool) -> JobFilter:
    """The filter of the jobs list's query string; the user filter is for admins only."""
    cleaned = {name: value.strip() for name, value in params.items() if value.strip()}
    status = cleaned.get("status")
    if status is not None and status not in set(JobStatus):
        raise InvalidRequest(f"status: {status!r} is not one of {', '.join(JobStatus)}")
    text = cleaned.get("text")
    if text is not None and len(text) > _MAX_TEXT:
        raise InvalidRequest(f"text: at most {_MAX_TEXT} characters")
    user = cleaned.get("user")
    if user is not None and not admin:
        raise InvalidRequest("user: only admins filter by user")
    return JobFilter(
        status=JobStatus(status) if status else None,
        priority=_priority(cleaned.get("priority")),
        since=moment_field("since", cleaned.get("since")),
        until=moment_field("until", cleaned.get("until")),
        text=text,
        user=user,
    )


def _priority(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 10:
        raise InvalidRequest(f"priority: {value!r} is not a whole number from 1 to 10")
    return int(value)


def moment_field(name: str, value: str | None) -> datetime | None:
    """The time in form field `name` (datetime-local or ISO 8601), read as UTC when it names
    no zone; a 400 naming the field when it is not a time."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"{name}: {value!r} is not a date and time (YYYY-MM-DDTHH:MM)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
