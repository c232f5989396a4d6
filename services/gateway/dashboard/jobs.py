"""/dashboard/jobs: the filtered, paged list, one job's page and its live event stream.

Users see their own jobs; admins see everyone's. Another user's job id answers 404, as the
JSON API does.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode
from uuid import UUID

from asyncpg import Pool
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import ServerSentEvent, Template

from services.gateway.dashboard import queries
from services.gateway.dashboard.bulk import bulk_outcome
from services.gateway.dashboard.filters import parse_job_filter
from services.gateway.dashboard.sessions import DashboardSession
from services.gateway.errors import JobNotFound
from services.gateway.jobs.live import job_event_stream
from services.gateway.jobs.queries import JobRepository
from services.gateway.live import AfterQuery, LastEventIdHeader, draining, resume_after
from services.gateway.processing.queries import file_artifacts
from services.gateway.responses import PageNumber
from shared.ids import JobId, UserId
from shared.statuses import FINAL_JOB_STATUSES, JobStatus

JOBS_PER_PAGE = 25
ExportQuery = Annotated[UUID | None, QueryParameter(description="an export to show the state of")]


async def owner_of(pool: Pool, job_id: UUID, session: DashboardSession) -> tuple[JobId, UserId]:
    """The job and its owner, if the signed-in person may see it; JobNotFound otherwise."""
    job = JobId(str(job_id))
    user = session.user
    owner = await queries.job_owner(pool, job, None if user.is_admin else user.id)
    if owner is None:
        raise JobNotFound(job)
    return job, owner


class DashboardJobsController(Controller):
    """The jobs screens."""

    path = "/jobs"

    @get("/")
    async def jobs(
        self,
        *,
        request: Request[Any, Any, State],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        page: PageNumber = 1,
    ) -> Template:
        params = {name: value for name, value in request.query_params.items() if name != "page"}
        wanted = parse_job_filter(params, admin=session.user.is_admin)
        owner = None if session.user.is_admin else session.user.id
        rows, total = await queries.list_jobs(
            pool, owner, wanted, page=page, per_page=JOBS_PER_PAGE
        )
        query = urlencode(wanted.query())
        return Template(
            "jobs.html",
            context={
                "session": session,
                "page": "jobs",
                "jobs": rows,
                "total": total,
                "filter": wanted,
                "statuses": list(JobStatus),
                "page_number": page,
                "pages": max(1, -(-total // JOBS_PER_PAGE)),
                "query": f"{query}&" if query else "",
                "outcome": bulk_outcome(request.query_params),
            },
        )

    @get("/{job_id:uuid}")
    async def job(
        self,
        *,
        job_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        repository: NamedDependency[JobRepository],
        files_page: PageNumber = 1,
        export: ExportQuery = None,
    ) -> Template:
        job, owner = await owner_of(pool, job_id, session)
        record = await repository.job_status(owner, job)
        timeline, trace_id = await queries.job_timeline(pool, job)
        async with pool.acquire() as connection:
            artifacts = await file_artifacts(connection, job)
        return Template(
            "job.html",
            context={
                "session": session,
                "page": "jobs",
                "job": record,
                "files": await queries.job_files(pool, job, page=files_page),
                "files_page": files_page,
                "files_pages": max(1, -(-record.progress.total // queries.FILES_PER_PAGE)),
                "artifacts": artifacts,
                "executions": await queries.job_executions(pool, job),
                "timeline": timeline,
                "last_event_id": timeline[-1].id if timeline else 0,
                "trace_id": trace_id,
                "export": None
                if export is None
                else await queries.export_of(pool, str(export), owner),
                "ended": record.status in FINAL_JOB_STATUSES,
            },
        )

    @get("/{job_id:uuid}/events")
    async def job_events(
        self,
        *,
        job_id: FromPath[UUID],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
        state: State,
        last_event_id: LastEventIdHeader = None,
        after: AfterQuery = None,
    ) -> ServerSentEvent:
        """The JSON API's event stream of the job, signed in by the session cookie."""
        job, _ = await owner_of(pool, job_id, session)
        return ServerSentEvent(
            job_event_stream(
                pool, job, after_id=resume_after(last_event_id, after), stopping=draining(state)
            )
        )
