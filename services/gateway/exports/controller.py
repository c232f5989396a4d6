"""/api/v1/downloads/export(s): archives of the caller's files; build, follow, fetch, cancel."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, SkipValidation
from litestar.response import Stream
from opentelemetry import trace
from redis.asyncio import Redis

from services.gateway.auth import User
from services.gateway.errors import NotFound
from services.gateway.exports.cancellation import announce_export_cancel
from services.gateway.exports.queries import ExportRepository
from services.gateway.exports.schemas import (
    ExportCancelResponse,
    ExportCreateRequest,
    ExportCreateResponse,
    ExportStatusResponse,
    export_created_response,
    export_status_response,
)
from services.gateway.files import IfRangeHeader, RangeHeader, ranged_response
from services.gateway.jobs.schemas import CancelRequest
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import PARTIAL, errors
from shared.settings import Settings
from shared.statuses import ExportStatus
from shared.storage import Storage, StorageError

MEDIA_TYPES = {"zip": "application/zip", "tar.gz": "application/gzip"}
_CREATE_ERRORS = errors(
    400,
    403,
    404,
    409,
    413,
    meaning={
        403: "a path outside the caller's storage area, or a symlink",
        404: "a job, file id or path that is not the caller's",
        409: "a named file has no stored bytes",
        413: "the body, or the selection's bytes (DOWNLINK_MAX_EXPORT_SIZE), is too large",
    },
)


class ExportsController(Controller):
    """Exports of the authenticated user; another user's ids answer 404."""

    path = "/downloads"
    tags = ["exports"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post(
        "/export",
        status_code=202,
        request_max_body_size=32 * 1024 * 1024,
        responses=_CREATE_ERRORS,
    )
    async def create_export(
        self,
        *,
        data: JSONBody[ExportCreateRequest],
        current_user: NamedDependency[User],
        exports: NamedDependency[ExportRepository],
        relay: NamedDependency[OutboxRelay],
        settings: NamedDependency[Settings],
        # Storage is a Protocol, which Litestar's isinstance check of dependencies cannot test.
        storage: NamedDependency[SkipValidation[Storage]],
    ) -> ExportCreateResponse:
        """Queue an archive (zip or tar.gz) of the caller's stored files named by the body.

        Paths outside the caller's own files are refused and nothing is written.
        """
        created = await exports.create(
            current_user.id,
            job_ids=data.job_ids,
            file_ids=data.file_ids,
            file_paths=data.file_paths,
            export_format=data.export_format,
            include_metadata=data.include_metadata,
            storage=storage,
            max_bytes=settings.max_export_size_bytes,
        )
        relay.wake()
        trace.get_current_span().set_attribute("downlink.export_id", created.export_id)
        return export_created_response(created)

    @get("/exports/{export_id:uuid}", responses=errors(400, 404))
    async def export_status(
        self,
        *,
        export_id: FromPath[UUID],
        current_user: NamedDependency[User],
        exports: NamedDependency[ExportRepository],
    ) -> ExportStatusResponse:
        """Status, progress and, once ready, size, hash and download URL of one export."""
        trace.get_current_span().set_attribute("downlink.export_id", str(export_id))
        return export_status_response(await exports.status(current_user.id, str(export_id)))

    @get(
        "/exports/{export_id:uuid}/download",
        responses={
            206: PARTIAL,
            **errors(400, 404, 409, 416, meaning={409: "the export is not ready (yet)"}),
        },
    )
    async def download_export(
        self,
        *,
        export_id: FromPath[UUID],
        current_user: NamedDependency[User],
        exports: NamedDependency[ExportRepository],
        storage: NamedDependency[SkipValidation[Storage]],
        range_header: RangeHeader = None,
        if_range: IfRangeHeader = None,
    ) -> Stream:
        """The archive's bytes; a single `Range` answers 206. 409 until it is ready."""
        trace.get_current_span().set_attribute("downlink.export_id", str(export_id))
        archive = await exports.archive(current_user.id, str(export_id))
        try:
            size = await storage.size(archive.filepath)
        except StorageError:
            raise NotFound(f"export {export_id}: its archive is no longer in storage") from None
        return ranged_response(
            size=size,
            sha256=archive.sha256,
            filename=archive.filename,
            media_type=MEDIA_TYPES.get(archive.format, "application/octet-stream"),
            range_header=range_header,
            if_range=if_range,
            read=lambda start, end: storage.read(archive.filepath, start, end),
        )

    @post(
        "/exports/{export_id:uuid}/cancel",
        status_code=200,
        responses=errors(400, 404, 409, 413, meaning={409: "the export already ended"}),
    )
    async def cancel_export(
        self,
        *,
        export_id: FromPath[UUID],
        current_user: NamedDependency[User],
        exports: NamedDependency[ExportRepository],
        redis: NamedDependency[Redis],
        settings: NamedDependency[Settings],
        data: JSONBody[CancelRequest | None] = None,
    ) -> ExportCancelResponse:
        """Cancel an export that has not ended (its build aborts, its part is removed); 409
        when it has."""
        export = str(export_id)
        trace.get_current_span().set_attribute("downlink.export_id", export)
        await exports.cancel(current_user.id, export, reason=data.reason if data else None)
        await announce_export_cancel(redis, export, ttl_s=settings.retention_s)
        return ExportCancelResponse(export_id=export, status=ExportStatus.CANCELLED)
