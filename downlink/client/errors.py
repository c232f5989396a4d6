"""What the client raises, and the one mapping of gateway answers onto it.

shared.errors.DownlinkError
└── DownlinkError            anything the client raises on purpose: `status`, `message`, `detail`
    ├── Invalid              400, 422  a field or argument is wrong; `field` names it
    ├── Unauthorized         401       no token, or an invalid or revoked one
    ├── Forbidden            403       not allowed to this user (admin routes, foreign paths)
    ├── NotFound             404       no such id of this user (another user's ids answer the same)
    ├── Conflict             409       the resource is in a state that does not allow it
    ├── TooLarge             413       the body, the arguments or an export is over a limit
    ├── Unavailable          429, 5xx  try again later; `retry_after_s` when the gateway said
    ├── ConnectionFailed               the gateway could not be reached; the message names the URL
    ├── TaskFailedError                the task ended failed or dead; `error` and `traceback`
    ├── TaskCancelledError             the task was cancelled before it ended
    └── ExportFailedError              the export ended failed or cancelled; `error`
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from shared.errors import DownlinkError as _DownlinkRoot

# "args.image_id: expected int": the gateway's messages start with the field they are about.
_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]-]*): ")


class DownlinkError(_DownlinkRoot):
    """The gateway refused a request, or the client could not get an answer.

    Attributes:
        status: the HTTP status, None when no answer came (or the error is not an HTTP one).
        message: the gateway's own message (its `detail`), which names the field at fault.
        detail: the whole error body as the gateway sent it (its `extra` lists every problem).
    """

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.detail = detail


class Invalid(DownlinkError):
    """A field, parameter or task argument is malformed; nothing was written."""

    @property
    def field(self) -> str | None:
        """The field the message names first (`args.image_id`, `urls[0]`), if any."""
        found = _FIELD.match(self.message)
        return found.group(1) if found else None


class Unauthorized(DownlinkError):
    """No bearer token, or one the gateway does not know (or has revoked)."""


class Forbidden(DownlinkError):
    """The route or the path is not this user's to use."""


class NotFound(DownlinkError):
    """Nothing by that id belongs to this user."""


class Conflict(DownlinkError):
    """The job, task or export is in a state that does not allow this (it ended, say)."""


class TooLarge(DownlinkError):
    """The request, the task's arguments or the export is over a limit."""


class Unavailable(DownlinkError):
    """The gateway or what it depends on is overloaded or down; try again later."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: Any = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, detail=detail)
        self.retry_after_s = retry_after_s


class ConnectionFailed(DownlinkError):
    """No answer from the gateway: refused, reset, timed out or unresolvable."""


class TaskFailedError(DownlinkError):
    """The task ended in error (`failed`, or `dead` after its last try).

    Attributes:
        task_id: the task.
        error: the error's first line as the worker reported it (`Permanent: image 7 is gone`).
        traceback: the worker's traceback, or "" when the worker sent none.
    """

    def __init__(self, task_id: str, status: str, text: str) -> None:
        error, _, traceback = text.partition("\n\n")
        super().__init__(f"task {task_id} {status}: {error}")
        self.task_id = task_id
        self.error = error
        self.traceback = traceback


class TaskCancelledError(DownlinkError):
    """The task was cancelled before it ended; it has no result."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


class ExportFailedError(DownlinkError):
    """The archive was not built: the export failed or was cancelled."""

    def __init__(self, export_id: str, status: str, error: str | None) -> None:
        super().__init__(f"export {export_id} {status}: {error or 'no reason given'}")
        self.export_id = export_id
        self.error = error


_BY_STATUS: dict[int, type[DownlinkError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: Invalid,
}


def error_for(status: int, body: bytes, headers: dict[str, str]) -> DownlinkError:
    """The error a gateway answer of `status` stands for, carrying the gateway's message."""
    detail: Any
    try:
        detail = msgspec.json.decode(body)
    except msgspec.DecodeError:
        detail = body.decode(errors="replace")
    message = detail.get("detail") if isinstance(detail, dict) else None
    if not isinstance(message, str) or not message:
        message = str(detail).strip() or f"HTTP {status}"
    if status == 429 or status >= 500:
        return Unavailable(
            message,
            status=status,
            detail=detail,
            retry_after_s=_seconds(headers.get("retry-after")),
        )
    return _BY_STATUS.get(status, DownlinkError)(message, status=status, detail=detail)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: rare from the gateway, and not worth parsing
