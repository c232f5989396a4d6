"""/api/v1/downloads: submit jobs, follow them, cancel them and fetch their files."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import TYPE_CHECKING, Annotated, BinaryIO
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import (
    FromPath,
    JSONBody,
    QueryParameter,
    SkipValidation,
)
from litestar.response import ServerSentEvent, Stream
from redis.asyncio import Redis

from services.gateway.auth import User
from services.gateway.errors import FileNotFound, InvalidRequest, JobNotFound
from services.gateway.executions.queries import job_owned_by
from services.gateway.files import IfRangeHeader, RangeHeader, ranged_response
from services.gateway.jobs.cancellation import announce_cancel
from services.gateway.jobs.live import job_event_stream
from services.gateway.jobs.queries import JobRepository
from services.gateway.jobs.schemas import (
    CancelRequest,
    CancelResponse,
    JobListResponse,
    JobResultResponse,
    JobStatusResponse,
    SubmitResponse,
    job_list_response,
    job_result_response,
    job_status_response,
    submit_response,
)
from services.gateway.jobs.specs import SubmitRequest
from services.gateway.live import AfterQuery, LastEventIdHeader, draining, resume_after
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import PARTIAL, IdempotencyKey, PageNumber, PerPage, errors
from shared.ids import FileId, JobId
from shared.settings import Settings
from shared.statuses import JobStatus
from shared.storage import ObjectRefused, Storage, StorageError, read_open
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    from services.gateway.jobs.records import StoredFile

log = logging.getLogger(__name__)

_ENDED = {409: "the job already ended"}


class DownloadsController(Controller):
    """Jobs of the authenticated user; another user's ids answer 404."""

    path = "/downloads"
    tags = ["downloads"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post(
        "/download",
        status_code=202,
        request_max_body_size=32 * 1024 * 1024,
        responses=errors(400, 413),
    )
    async def submit(
        self,
        *,
        data: JSONBody[SubmitRequest],
        current_user: NamedDependency[User],
        repository: NamedDependency[JobRepository],
        relay: NamedDependency[OutboxRelay],
        idempotency_key: IdempotencyKey = None,
    ) -> SubmitResponse:
        """Accept a download job: 1-10000 URLs, each downloaded into the caller's storage area."""
        job = data.new_job(current_user.id, idempotency_key=idempotency_key)
        submitted = await repository.submit(job, trace_headers=trace_headers())
        if submitted.existing:
            message = "a job with this Idempotency-Key exists already; nothing new was queued"
        else:
            relay.wake()
            message = f"{len(job.files)} file(s) queued"
        return submit_response(submitted, message)

    @get("/jobs", responses=errors(400))
    async def list_jobs(
        self,
        *,
        current_user: NamedDependency[User],
        repository: NamedDependency[JobRepository],
        status_filter: Annotated[
            str | None,
            QueryParameter(description=f"one of {', '.join(JobStatus)}; empty for all"),
        ] = None,
        page: PageNumber = 1,
        per_page: PerPage = 20,
    ) -> JobListResponse:
        """The caller's jobs, newest first."""
        status: JobStatus | None = None
        if status_filter:
            try:
                status = JobStatus(status_filter)
            except ValueError:
                raise InvalidRequest(
                    f"status_filter: {status_filter!r} is not one of {', '.join(JobStatus)}"
                ) from None
        jobs = await repository.list_jobs(
            current_user.id, status=status, page=page, per_page=per_page
        )
        return job_list_response(jobs)

    @get("/jobs/{job_id:uuid}", responses=errors(400, 404))
    async def job_status(
        self,
        *,
        job_id: FromPath[UUID],
        current_user: NamedDependency[User],
        repository: NamedDependency[JobRepository],
    ) -> JobStatusResponse:
        """Status and progress of one job."""
        return job_status_response(await repository.job_status(current_user.id, JobId(str(job_id))))

    @get("/jobs/{job_id:uuid}/result", responses=errors(400, 404))
    async def job_result(
        self,
        *,
        job_id: FromPath[UUID],
        current_user: NamedDependency[User],
        repository: NamedDependency[JobRepository],
    ) -> JobResultResponse:
        """Every file of the job with where it is stored, its size and hash."""
        return job_result_response(await repository.job_result(current_user.id, JobId(str(job_id))))

    @post(
        "/jobs/{job_id:uuid}/cancel",
        status_code=200,
        responses=errors(400, 404, 409, 413, meaning=_ENDED),
    )
    async def cancel(
        self,
        *,
        job_id: FromPath[UUID],
        current_user: NamedDependency[User],
        repository: NamedDependency[JobRepository],
        relay: NamedDependency[OutboxRelay],
        redis: NamedDependency[Redis],
        settings: NamedDependency[Settings],
        data: JSONBody[CancelRequest | None] = None,
    ) -> CancelResponse:
        """Cancel a job that has not ended; 409 when it has."""
        job = JobId(str(job_id))
        await repository.cancel(
            current_user.id,
            job,
            reason=data.reason if data else None,
            trace_headers=trace_headers(),
        )
        relay.wake()
        await announce_cancel(redis, job, ttl_s=settings.retention_s)
        return CancelResponse(job_id=job, status=JobStatus.CANCELLED)

    @get("/jobs/{job_id:uuid}/events", responses=errors(400, 404))
    async def job_events(
        self,
        *,
        job_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        state: State,
        last_event_id: LastEventIdHeader = None,
        after: AfterQuery = None,
    ) -> ServerSentEvent:
        """The job's events as Server-Sent Events, in order, until the job ends.

        Each event's `id` is its place in the job's log and `event` its type (file.started,
        file.progress, file.downloaded, file.failed, file.retrying, job.finished, ...); `data`
        is the event as JSON. Progress is kept per file, so a resumed stream carries each
        file's latest progress rather than every tick it missed.
        """
        job = JobId(str(job_id))
        if not await job_owned_by(pool, job, current_user):
            raise JobNotFound(job)
        return ServerSentEvent(
            job_event_stream(
                pool,
                job,
                after_id=resume_after(last_event_id, after),
                stopping=draining(state),
            )
        )

    @get("/files/{file_id:uuid}", responses={206: PARTIAL, **errors(400, 404, 416)})
    async def download_file(
        self,
        *,
        file_id: FromPath[UUID],
        current_user: NamedDependency[User],
        repository: NamedDependency[JobRepository],
        # Storage is a Protocol, which Litestar's isinstance check of dependencies cannot test.
        storage: NamedDependency[SkipValidation[Storage]],
        range_header: RangeHeader = None,
        if_range: IfRangeHeader = None,
    ) -> Stream:
        """The stored bytes of a downloaded file; a single `Range` answers 206.

        Only a regular file under the storage root with the recorded size is served: a stored
        object swapped for a symbolic link, a link on its way, a hard link of another size or
        a file changed since the download answers 404 "no longer in storage", as a deleted one
        does, since the bytes the record describes are gone (the reason is logged).
        """
        stored = await repository.stored_file(current_user.id, FileId(str(file_id)))
        source = await _open_stored(storage, stored)
        try:
            size = stored.size
            if size is None:  # no recorded size to check against: the checked file has one
                size = await asyncio.to_thread(source.seek, 0, io.SEEK_END)
            return ranged_response(
                size=size,
                sha256=stored.sha256,
                filename=stored.filename,
                media_type=stored.content_type or "application/octet-stream",
                range_header=range_header,
                if_range=if_range,
                # Streams from the file just checked: a swap after the check changes nothing.
                read=lambda start, end: read_open(source, start, end),
            )
        except BaseException:
            source.close()
            raise


async def _open_stored(storage: Storage, stored: StoredFile) -> BinaryIO:
    """The stored object of `stored`, through storage's one check; FileNotFound otherwise."""
    try:
        return await asyncio.to_thread(storage.open_verified, stored.filepath, stored.size)
    except ObjectRefused as exc:
        log.warning(
            "file %s not served: %s", stored.file_id, exc, extra={"file_id": stored.file_id}
        )
        raise FileNotFound(stored.file_id, "is no longer in storage") from None
    except StorageError:
        raise FileNotFound(stored.file_id, "is no longer in storage") from None
