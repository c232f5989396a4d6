"""Telling downloaders a job was cancelled (a flag for queued work, a message for running
work), and cancelling every open job a filter picks, the record first."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from services.gateway.jobs.lifecycle import cancel_open_jobs
from services.gateway.jobs.selection import matching_jobs
from shared.statuses import JobStatus
from shared.streams import CANCEL_CHANNEL, cancelled_key
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    from asyncpg import Pool
    from redis.asyncio import Redis

    from services.gateway.jobs.selection import JobFilter
    from services.gateway.outbox import OutboxRelay
    from shared.ids import JobId, UserId

log = logging.getLogger(__name__)


async def announce_cancel(redis: Redis, job_id: JobId, *, ttl_s: int) -> bool:
    """Set the job's cancelled flag and publish its id; False when Redis could not be told.

    PostgreSQL already records the cancellation, and the tracker ignores whatever the job's
    files do afterwards, so a Redis failure here only means work that could have been skipped
    runs to no effect: it is logged, not raised.
    """
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(cancelled_key(job_id), b"1", ex=ttl_s)
            pipe.publish(CANCEL_CHANNEL, job_id)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("job %s cancelled, but Redis could not be told: %s", job_id, exc)
        return False
    return True


_OPEN = (JobStatus.PENDING, JobStatus.IN_PROGRESS)


class JobsCancelled(msgspec.Struct, frozen=True, kw_only=True):
    """The open jobs that matched, those cancelled, and how many were past `limit`."""

    matched: int
    cancelled: int
    remaining: int


async def cancel_jobs_matching(
    owner: UserId | None,
    wanted: JobFilter,
    *,
    reason: str,
    limit: int,
    pool: Pool,
    redis: Redis,
    relay: OutboxRelay,
    ttl_s: int,
) -> JobsCancelled:
    """Cancel the open jobs matching `wanted`, oldest first, at most `limit`, as one job's
    cancel does; `owner` None reaches every user's (admins)."""
    picked, total = await matching_jobs(pool, owner, wanted, statuses=_OPEN, limit=limit)
    async with pool.acquire() as connection, connection.transaction():
        cancelled = await cancel_open_jobs(
            connection, [job for job, _ in picked], reason, headers=trace_headers()
        )
    if cancelled:
        relay.wake()
    for job in cancelled:
        await announce_cancel(redis, job, ttl_s=ttl_s)
    log.info("%d of %d matching jobs cancelled", len(cancelled), total)
    return JobsCancelled(matched=total, cancelled=len(cancelled), remaining=total - len(picked))
