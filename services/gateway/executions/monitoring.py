"""What the gateway's /metrics reads at each scrape: streams from Redis, jobs from PostgreSQL.

Counts read from the record survive restarts of every process, unlike the counters a process
keeps; a source that is down leaves its gauges out of that scrape rather than failing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from redis.exceptions import RedisError

from shared import metrics
from shared.postgres import DATABASE_DOWN
from shared.queues import queue_report
from shared.statuses import FileStatus, JobStatus
from shared.streams import GROUPS
from shared.workers import list_workers

if TYPE_CHECKING:
    import asyncpg
    from prometheus_client import Metric
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

SERVICES = ("gateway", "downloader", "processor", "exporter")
_QUERY_TIMEOUT_S = 5.0


async def refresh(pool: asyncpg.Pool, redis: Redis) -> None:
    """Replace the scrape-time gauges with what Redis and PostgreSQL hold now."""
    redis_families, postgres_families = await asyncio.gather(
        _from_redis(redis), _from_postgres(pool)
    )
    metrics.SNAPSHOT.replace("redis", redis_families)
    metrics.SNAPSHOT.replace("postgres", postgres_families)


async def _from_redis(redis: Redis) -> list[Metric]:
    try:
        report = await queue_report(redis, GROUPS)
        workers = await list_workers(redis)
    except (RedisError, OSError) as exc:
        log.warning("metrics: Redis unavailable: %s", exc)
        return []
    live = metrics.count_family(
        "downlink_workers",
        "Live service processes (heartbeat within the last 30 s), by service.",
        "service",
        dict(Tally(worker.service for worker in workers)),
        known=SERVICES,
    )
    return [*metrics.queue_families(report), live]


async def _from_postgres(pool: asyncpg.Pool) -> list[Metric]:
    try:
        async with pool.acquire(timeout=_QUERY_TIMEOUT_S) as connection:
            jobs = await connection.fetch(
                "SELECT status, count(*) AS n FROM jobs GROUP BY status",
                timeout=_QUERY_TIMEOUT_S,
            )
            files = await connection.fetch(
                "SELECT status, count(*) AS n, coalesce(sum(size), 0)::bigint AS bytes"
                " FROM files GROUP BY status",
                timeout=_QUERY_TIMEOUT_S,
            )
    except DATABASE_DOWN as exc:
        log.warning("metrics: PostgreSQL unavailable: %s", exc)
        return []
    stored = sum(row["bytes"] for row in files if row["status"] == FileStatus.COMPLETED)
    return [
        metrics.count_family(
            "downlink_jobs",
            "Jobs on record, by status (final and not).",
            "status",
            {row["status"]: row["n"] for row in jobs},
            known=tuple(JobStatus),
        ),
        metrics.count_family(
            "downlink_files",
            "Files on record, by status (final and not).",
            "status",
            {row["status"]: row["n"] for row in files},
            known=tuple(FileStatus),
        ),
        GaugeMetricFamily(
            "downlink_stored_bytes", "Bytes of every completed file on record.", value=stored
        ),
    ]
