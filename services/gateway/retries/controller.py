"""POST /downloads/jobs/{job_id}/retry-failed and POST /tasks/retry: an owner's bulk retries,
and the functions behind them that the dashboard's "retry all matching" buttons call too.

Each reopens the work on the record, as a dead letter's re-drive does, and then drops the dead
letters of the work it reopened, so the dead-letter listing does not offer it a second time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import UUID

import msgspec
from asyncpg import Pool
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from redis.asyncio import Redis

from services.gateway.auth import User
from services.gateway.dead_letters.bulk import forget_letters_of
from services.gateway.dead_letters.letters import latest_letter_id
from services.gateway.errors import CannotRedrive, JobNotFound
from services.gateway.jobs.selection import JobFilter, matching_jobs
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import errors
from services.gateway.retries.queries import reopen_failed_files, reopen_tasks
from services.gateway.tasks.selection import TaskFilter, matching_tasks
from shared.ids import FileId, JobId, UserId
from shared.statuses import JobStatus
from shared.streams import cancelled_key
from shared.task_types import TaskStatus
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

RetryableStatus = Literal["failed", "dead"]
RETRYABLE = (TaskStatus.FAILED, TaskStatus.DEAD)
# A job that was cancelled keeps its files cancelled; any other job may have failed files.
_JOBS_WITH_RETRIES = tuple(status for status in JobStatus if status != JobStatus.CANCELLED)


class FailedFilesRetried(msgspec.Struct, frozen=True, kw_only=True):
    """The job's files that had failed and are pending again (none: nothing had failed)."""

    job_id: str
    requeued: int
    file_ids: list[str]


class TaskRetryRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which of the caller's tasks to retry: those in `status` (default both), of `task` if
    given, oldest first, at most `limit` of them."""

    task: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    status: Annotated[list[RetryableStatus], msgspec.Meta(min_length=1)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1000


class TaskRefused(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    reason: str


class TasksRetried(msgspec.Struct, frozen=True, kw_only=True):
    """The tasks pending again, those that ended otherwise meanwhile, and how many matching
    tasks were past `limit` (`remaining`: call again for them)."""

    matched: int
    requeued: int
    task_ids: list[str]
    skipped: list[TaskRefused]
    remaining: int


async def retry_failed_of(
    job: JobId, owner: UserId, *, pool: Pool, redis: Redis, relay: OutboxRelay
) -> list[FileId]:
    """Queue the owner's job's failed files again; their ids (JobNotFound, CannotRedrive)."""
    upto = await latest_letter_id(redis)
    file_ids = await reopen_failed_files(pool, owner, job, headers=trace_headers())
    if file_ids:
        # A timed-out job keeps its cancelled flag, which would make downloaders skip these.
        await redis.delete(cancelled_key(job))
        relay.wake()
        await forget_letters_of(redis, file_ids=set(file_ids), upto=upto)
    log.info("job %s: %d failed files queued again", job, len(file_ids))
    return file_ids


class JobsRetried(msgspec.Struct, frozen=True, kw_only=True):
    """Of the matching jobs with failed files: how many had files queued again, how many
    files that was, those refused (cancelled or gone since), and how many were past `limit`."""

    matched: int
    jobs: int
    requeued: int
    skipped: int
    remaining: int


async def retry_tasks_matching(
    owner: UserId | None,
    wanted: TaskFilter,
    *,
    statuses: Sequence[TaskStatus] = RETRYABLE,
    limit: int,
    pool: Pool,
    redis: Redis,
    relay: OutboxRelay,
) -> TasksRetried:
    """Run again the failed or dead tasks (of `statuses`) that match `wanted`, oldest first, at
    most `limit`; `owner` None reaches every user's (admins)."""
    picked, total = await matching_tasks(
        pool, owner, wanted, statuses=[s for s in statuses if s in RETRYABLE], limit=limit
    )
    upto = await latest_letter_id(redis)
    reopened, refused = await reopen_tasks(pool, picked, headers=trace_headers())
    if reopened:
        relay.wake()
        await forget_letters_of(redis, task_ids=set(reopened), upto=upto)
    log.info("%d of %d matching tasks queued again", len(reopened), total)
    return TasksRetried(
        matched=total,
        requeued=len(reopened),
        task_ids=reopened,
        skipped=[TaskRefused(task_id=t, reason=reason) for t, reason in refused.items()],
        remaining=total - len(picked),
    )


async def retry_jobs_matching(
    owner: UserId | None,
    wanted: JobFilter,
    *,
    limit: int,
    pool: Pool,
    redis: Redis,
    relay: OutboxRelay,
) -> JobsRetried:
    """Queue again the failed files of every job matching `wanted` that has some, oldest job
    first, at most `limit` jobs; `owner` None reaches every user's (admins)."""
    picked, total = await matching_jobs(
        pool, owner, wanted, statuses=_JOBS_WITH_RETRIES, with_failed_files=True, limit=limit
    )
    jobs = files = skipped = 0
    for job, job_owner in picked:
        try:
            file_ids = await retry_failed_of(job, job_owner, pool=pool, redis=redis, relay=relay)
        except (CannotRedrive, JobNotFound):  # cancelled or deleted since it was picked
            skipped += 1
            continue
        jobs += bool(file_ids)
        files += len(file_ids)
    return JobsRetried(
        matched=total, jobs=jobs, requeued=files, skipped=skipped, remaining=total - len(picked)
    )


class RetriesController(Controller):
    """Bulk retries of the caller's own work; another user's job answers 404."""

    path = "/"

    @post(
        "/downloads/jobs/{job_id:uuid}/retry-failed",
        status_code=200,
        tags=["downloads"],
        responses=errors(400, 404, 409, meaning={409: "the job was cancelled"}),
    )
    async def retry_failed_files(
        self,
        *,
        job_id: FromPath[UUID],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
    ) -> FailedFilesRetried:
        """Download every failed file of the job again, with a full set of tries; the job is
        in progress again until they end. Files that did not fail are left as they are."""
        job = JobId(str(job_id))
        file_ids = await retry_failed_of(job, current_user.id, pool=pool, redis=redis, relay=relay)
        return FailedFilesRetried(job_id=job, requeued=len(file_ids), file_ids=list(file_ids))

    @post("/tasks/retry", status_code=200, tags=["tasks"], responses=errors(400))
    async def retry_tasks(
        self,
        *,
        data: JSONBody[TaskRetryRequest],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        relay: NamedDependency[OutboxRelay],
    ) -> TasksRetried:
        """Run the caller's failed or dead tasks again (each as its dead letter's retry would:
        pending at once, a whole set of tries again)."""
        wanted = data.status or ["failed", "dead"]
        return await retry_tasks_matching(
            current_user.id,
            TaskFilter(task=data.task),
            statuses=[TaskStatus(status) for status in dict.fromkeys(wanted)],
            limit=data.limit,
            pool=pool,
            redis=redis,
            relay=relay,
        )
