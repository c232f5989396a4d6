"""/api/v1/downloads/export(s): archives of the caller's files; build, follow, fetch, cancel."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, HeaderParameter, JSONBody, SkipValidation
from litestar.response import Stream
from opentelemetry import trace
from redis.asyncio import Redis

from services.gateway.controllers.responses import PARTIAL, errors
from services.gateway.disposition import attachment
from services.gateway.errors import NotFound
from services.gateway.exports import MEDIA_TYPES, ExportRepository, announce_export_cancel
from services.gateway.ranges import parse_range
from services.gateway.relay import OutboxRelay
from services.gateway.repository import User
from services.gateway.resources import (
    provide_redis,
    provide_relay,
    provide_settings,
    provide_storage,
    resources_of,
)
from services.gateway.schemas import (
    CancelRequest,
    ExportCancelResponse,
    ExportCreateRequest,
    ExportCreateResponse,
    ExportStatus,
    ExportStatusResponse,
)
from shared.settings import Settings
from shared.storage import Storage, StorageError

_SECONDS_PER_DAY = 86_400
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


def provide_exports(state: State) -> ExportRepository:
    return ExportRepository(resources_of(state).pool)


class ExportsController(Controller):
    """Exports of the authenticated user; another user's ids answer 404."""

    path = "/downloads"
    tags = ["exports"]  # noqa: RUF012 - Litestar reads this class attribute as is
    dependencies = {  # noqa: RUF012
        "exports": Provide(provide_exports, sync_to_thread=False),
        "relay": Provide(provide_relay, sync_to_thread=False),
        "redis": Provide(provide_redis, sync_to_thread=False),
        "storage": Provide(provide_storage, sync_to_thread=False),
        "settings": Provide(provide_settings, sync_to_thread=False),
    }
    signature_namespace = {  # noqa: RUF012 - names Litestar resolves in the signatures
        "ExportRepository": ExportRepository,
        "OutboxRelay": OutboxRelay,
        "Redis": Redis,
        "Settings": Settings,
        "Storage": Storage,
        "User": User,
    }

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
        return ExportCreateResponse(
            export_id=created.export_id,
            status=ExportStatus.PENDING,
            file_count=created.file_count,
            total_bytes=created.total_bytes,
        )

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
        return await exports.status(current_user.id, str(export_id))

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
        range_header: Annotated[str | None, HeaderParameter(name="Range")] = None,
        if_range: Annotated[str | None, HeaderParameter(name="If-Range")] = None,
    ) -> Stream:
        """The archive's bytes; a single `Range` answers 206. 409 until it is ready."""
        trace.get_current_span().set_attribute("downlink.export_id", str(export_id))
        archive = await exports.archive(current_user.id, str(export_id))
        try:
            size = await storage.size(archive.filepath)
        except StorageError:
            raise NotFound(f"export {export_id}: its archive is no longer in storage") from None
        etag = f'"{archive.sha256}"' if archive.sha256 else None
        # If-Range: honour the range only while the client's copy is still this archive.
        wanted = parse_range(range_header, size) if if_range in (None, etag) else None
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Disposition": attachment(archive.filename),
        }
        if etag:
            headers["ETag"] = etag
        if wanted is None:
            start, end, status_code = 0, size, 200
        else:
            start, end, status_code = wanted.start, wanted.end, 206
            headers["Content-Range"] = wanted.content_range
        headers["Content-Length"] = str(end - start)
        return Stream(
            storage.read(archive.filepath, start, end),
            status_code=status_code,
            headers=headers,
            media_type=MEDIA_TYPES.get(archive.format, "application/octet-stream"),
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
        await announce_export_cancel(
            redis, export, ttl_s=settings.retention_days * _SECONDS_PER_DAY
        )
        return ExportCancelResponse(export_id=export, status=ExportStatus.CANCELLED)
