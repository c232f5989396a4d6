"""The gateway's domain errors; app.py maps each onto its HTTP status in one place.

DownlinkError (shared.errors)
└── GatewayError
    ├── InvalidRequest        400  a parameter or header is malformed; the message names it
    ├── NotFound              404  missing, or another user's
    │   ├── JobNotFound
    │   ├── FileNotFound
    │   ├── ExportNotFound
    │   └── DeadLetterNotFound
    ├── PathRefused           403  an absolute path outside the user's area, a symbolic link,
    │                              or a stored file not of its recorded size
    ├── JobAlreadyEnded       409  the job reached a final state before the request
    ├── CannotRedrive         409  a dead letter whose work may not run again (cancelled job)
    ├── NotExportable         409  a file without stored bytes, or an empty selection
    ├── ExportNotReady        409  the archive is not built (yet)
    ├── ExportAlreadyEnded    409  cancel of an export that is ready, failed or cancelled
    ├── ExportTooLarge        413  over DOWNLINK_MAX_EXPORT_SIZE or the item limit
    ├── RangeNotSatisfiable   416  a Range header outside the stored bytes
    └── ServiceUnavailable    503  PostgreSQL or Redis cannot be reached
"""

from __future__ import annotations

from shared.errors import DownlinkError


class GatewayError(DownlinkError):
    """An error with an HTTP meaning; `status_code` is what the client sees."""

    status_code = 500

    @property
    def headers(self) -> dict[str, str]:
        """Headers the response must carry (Content-Range on a 416, for instance)."""
        return {}


class InvalidRequest(GatewayError):
    """A parameter or header is malformed; the message starts with its name."""

    status_code = 400


class NotFound(GatewayError):
    """Nothing by that id belongs to the caller (another user's ids answer the same)."""

    status_code = 404


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")


class FileNotFound(NotFound):
    def __init__(self, file_id: str, reason: str = "not found") -> None:
        super().__init__(f"file {file_id} {reason}")


class ExportNotFound(NotFound):
    def __init__(self, export_id: str) -> None:
        super().__init__(f"export {export_id} not found")


class DeadLetterNotFound(NotFound):
    def __init__(self, letter_id: str) -> None:
        super().__init__(f"dead letter {letter_id} not found")


class JobAlreadyEnded(GatewayError):
    status_code = 409

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} already ended: {status}")
        self.status = status


class CannotRedrive(GatewayError):
    """A dead letter whose work must not run again; the message says why."""

    status_code = 409


class PathRefused(GatewayError):
    """A path that points outside the caller's own files; the message names it."""

    status_code = 403


class NotExportable(GatewayError):
    """Something in the selection has no stored bytes, or nothing in it has."""

    status_code = 409


class ExportNotReady(GatewayError):
    status_code = 409

    def __init__(self, export_id: str, status: str) -> None:
        super().__init__(
            f"export {export_id} is {status}; its archive can be downloaded once ready"
        )


class ExportAlreadyEnded(GatewayError):
    status_code = 409

    def __init__(self, export_id: str, status: str) -> None:
        super().__init__(f"export {export_id} already ended: {status}")


class ExportTooLarge(GatewayError):
    status_code = 413


class RangeNotSatisfiable(GatewayError):
    status_code = 416

    def __init__(self, size: int) -> None:
        super().__init__(f"requested range not satisfiable; the file has {size} bytes")
        self.size = size

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class ServiceUnavailable(GatewayError):
    status_code = 503
