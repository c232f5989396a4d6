"""Retention of user-defined tasks: those ended longer ago than DOWNLINK_RETENTION_DAYS are
deleted from PostgreSQL with their history rows.

The gateway's relay runs the purge with its own (sent outbox rows, old processed-event ids),
every ten minutes, one bounded batch per call, calling again between its publishes until a
batch is not full. Open tasks (pending, running; a delayed one too) are never purged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from services.gateway.tasks.records import OPEN_STATUSES
from shared.task_types import TaskStatus

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)


# Per statement: short transactions, so the relay (which runs the purge) keeps relaying.
PURGE_BATCH = 1000
_ENDED = ", ".join(f"'{status}'" for status in TaskStatus if status not in OPEN_STATUSES)


async def purge_ended_tasks(
    pool: asyncpg.Pool, *, older_than_s: float, limit: int = PURGE_BATCH
) -> bool:
    """Delete up to `limit` tasks that ended (completed, failed, cancelled, dead) more than
    `older_than_s` ago, with their history rows; True when the batch was full (more may remain).

    Rows another transaction holds (a re-drive reopening one) are skipped, not waited for.
    """
    removed = await pool.fetchval(
        "WITH doomed AS ("
        # The statuses spelled out, as the partial index tasks_ended names them (a parameter
        # would keep the planner from using it).
        f"   SELECT id FROM tasks WHERE status IN ({_ENDED})"
        "   AND coalesce(finished_at, updated_at) < now() - make_interval(secs => $1)"
        "   LIMIT $2 FOR UPDATE SKIP LOCKED),"
        " tries AS (DELETE FROM executions e USING doomed d"
        "   WHERE e.task = 'task' AND e.subject_id = d.id::text),"
        " gone AS (DELETE FROM tasks t USING doomed d WHERE t.id = d.id RETURNING 1)"
        " SELECT count(*) FROM gone",
        older_than_s,
        limit,
    )
    if removed:
        log.info("retention: %d ended tasks purged", removed, extra={"purged_tasks": removed})
    return bool(removed >= limit)
