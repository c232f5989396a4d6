"""POST /downloads/jobs/{job_id}/retry-failed and POST /tasks/retry: an owner's bulk retries.

Each reopens the work on the record, as a dead letter's re-drive does, and then drops the dead
letters of the work it reopened, so the dead-letter listing does not offer it a second time.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal
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
from services.gateway.outbox import OutboxRelay
from services.gateway.responses import errors
from services.gateway.retries.queries import reopen_failed_files, reopen_tasks, retryable_tasks
from shared.ids import FileId, JobId, UserId
from shared.streams import cancelled_key
from shared.task_types import TaskStatus
from shared.telemetry import trace_headers

log = logging.getLogger(__name__)

RetryableStatus = Literal["failed", "dead"]


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
        statuses = [TaskStatus(status) for status in dict.fromkeys(wanted)]
        picked, total = await retryable_tasks(
            pool, current_user.id, statuses=statuses, task=data.task, limit=data.limit
        )
        upto = await latest_letter_id(redis)
        reopened, refused = await reopen_tasks(pool, picked, headers=trace_headers())
        if reopened:
            relay.wake()
            await forget_letters_of(redis, task_ids=set(reopened), upto=upto)
        log.info("%s: %d tasks queued again", current_user.name, len(reopened))
        return TasksRetried(
            matched=total,
            requeued=len(reopened),
            task_ids=reopened,
            skipped=[TaskRefused(task_id=t, reason=reason) for t, reason in refused.items()],
            remaining=total - len(picked),
        )
