"""The dashboard's buttons: cancel a job, retry its failed files, export it, download a file or an
export.

Each form POST must carry the session's CSRF token (sessions.checked_form) and answers with a
redirect back to the job's page, so a reload never repeats it.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, SkipValidation
from litestar.response import Redirect, Stream
from redis.asyncio import Redis

from services.gateway.dashboard import queries
from services.gateway.dashboard.jobs import owner_of
from services.gateway.dashboard.sessions import DashboardSession, checked_form
from services.gateway.errors import ExportNotFound, FileNotFound, InvalidRequest
from services.gateway.exports.controller import MEDIA_TYPES
from services.gateway.exports.queries import ExportRepository
from services.gateway.files import ranged_response
from services.gateway.jobs.cancellation import announce_cancel
from services.gateway.jobs.queries import JobRepository
from services.gateway.outbox import OutboxRelay
from services.gateway.retries.controller import retry_failed_of
from shared.ids import FileId
from shared.settings import Settings
from shared.storage import Storage, StorageError, read_open
from shared.telemetry import trace_headers

log = logging.getLogger(__name__)

_FORMATS = ("zip", "tar.gz")


class JobActionsController(Controller):
    """Cancel and export, by form POST."""

    path = "/jobs"

    @post("/{job_id:uuid}/cancel", status_code=303)
    async def cancel(
        self,
        *,
        request: Request[Any, Any, State],
        job_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        repository: NamedDependency[JobRepository],
        relay: NamedDependency[OutboxRelay],
        redis: NamedDependency[Redis],
        settings: NamedDependency[Settings],
    ) -> Redirect:
        await checked_form(request, session)
        job, owner = await owner_of(pool, job_id, session)
        await repository.cancel(
            owner,
            job,
            reason=f"cancelled from the dashboard by {session.user.name}",
            trace_headers=trace_headers(),
        )
        relay.wake()
        await announce_cancel(redis, job, ttl_s=settings.retention_s)
        log.info("job %s cancelled from the dashboard", job, extra={"job_id": job})
        return Redirect(f"/dashboard/jobs/{job}", status_code=303)

    @post("/{job_id:uuid}/retry-failed", status_code=303)
    async def retry_failed(
        self,
        *,
        request: Request[Any, Any, State],
        job_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
    ) -> Redirect:
        await checked_form(request, session)
        job, owner = await owner_of(pool, job_id, session)
        await retry_failed_of(job, owner, pool=pool, redis=redis, relay=relay)
        return Redirect(f"/dashboard/jobs/{job}", status_code=303)

    @post("/{job_id:uuid}/export", status_code=303)
    async def export(
        self,
        *,
        request: Request[Any, Any, State],
        job_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        exports: NamedDependency[ExportRepository],
        relay: NamedDependency[OutboxRelay],
        settings: NamedDependency[Settings],
        storage: NamedDependency[SkipValidation[Storage]],
    ) -> Redirect:
        form = await checked_form(request, session)
        export_format = form.get("format")
        if export_format not in _FORMATS:
            raise InvalidRequest(f"format: {export_format!r} is not one of {', '.join(_FORMATS)}")
        job, owner = await owner_of(pool, job_id, session)
        created = await exports.create(
            owner,
            job_ids=[job_id],
            file_ids=[],
            file_paths=[],
            export_format=export_format,
            include_metadata=True,
            storage=storage,
            max_bytes=settings.max_export_size_bytes,
        )
        relay.wake()
        return Redirect(f"/dashboard/jobs/{job}?export={created.export_id}", status_code=303)


class DownloadsLinkController(Controller):
    """Stored bytes behind the dashboard's links: a file, a thumbnail, an export's archive."""

    path = "/"

    @get("/files/{file_id:uuid}")
    async def file(
        self,
        *,
        file_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        repository: NamedDependency[JobRepository],
        storage: NamedDependency[SkipValidation[Storage]],
    ) -> Stream:
        user = session.user
        owner = await queries.file_owner(pool, str(file_id), None if user.is_admin else user.id)
        if owner is None:
            raise FileNotFound(str(file_id))
        stored = await repository.stored_file(owner, FileId(str(file_id)))
        try:
            # The same one check the JSON API makes: a regular file of the recorded size.
            source = await asyncio.to_thread(storage.open_verified, stored.filepath, stored.size)
        except StorageError:
            raise FileNotFound(stored.file_id, "is no longer in storage") from None
        try:
            size = stored.size
            if size is None:
                size = await asyncio.to_thread(source.seek, 0, io.SEEK_END)
            return ranged_response(
                size=size,
                sha256=stored.sha256,
                filename=stored.filename,
                media_type=stored.content_type or "application/octet-stream",
                range_header=None,
                if_range=None,
                read=lambda start, end: read_open(source, start, end),
            )
        except BaseException:
            source.close()
            raise

    @get("/exports/{export_id:uuid}/download")
    async def export_archive(
        self,
        *,
        export_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        exports: NamedDependency[ExportRepository],
        storage: NamedDependency[SkipValidation[Storage]],
    ) -> Stream:
        user = session.user
        owner = await queries.export_owner(pool, str(export_id), None if user.is_admin else user.id)
        if owner is None:
            raise ExportNotFound(str(export_id))
        archive = await exports.archive(owner, str(export_id))
        try:
            size = await storage.size(archive.filepath)
        except StorageError:
            raise ExportNotFound(str(export_id)) from None
        return ranged_response(
            size=size,
            sha256=archive.sha256,
            filename=archive.filename,
            media_type=MEDIA_TYPES.get(archive.format, "application/octet-stream"),
            range_header=None,
            if_range=None,
            read=lambda start, end: storage.read(archive.filepath, start, end),
        )
