"""POST /api/v1/queues/{queue}/purge: admins drop a task queue's waiting work, as Celery's purge.

Every pending task of the queue (delayed ones and those waiting out a retry's backoff too)
is cancelled in one transaction; running tasks are left alone. Workers then treat each one
as a cancelled task: a command already in a lane, or held by a worker, is skipped, never run.
"""

from __future__ import annotations

import logging
import re

import msgspec
from asyncpg import Pool
from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from redis.asyncio import Redis

from services.gateway.auth import User, admin_guard
from services.gateway.errors import InvalidRequest
from services.gateway.responses import errors
from services.gateway.tasks.cancellation import announce_task_cancels
from services.gateway.tasks.queries import cancel_open_tasks
from shared.settings import Settings

log = logging.getLogger(__name__)

# The names workers may give a queue (services.tasks.definitions.QUEUE_NAME).
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class PurgeResponse(msgspec.Struct, frozen=True, kw_only=True):
    """How many pending tasks of the queue were cancelled (0 for a queue no task is in)."""

    queue: str
    purged: int


class QueuesController(Controller):
    """Operator actions on task queues; 403 for anyone who is not an admin."""

    path = "/queues"
    tags = ["admin"]  # noqa: RUF012 - Litestar reads this class attribute as is

    @post(
        "/{queue:str}/purge",
        status_code=200,
        # On each handler, not the controller: see AdminController.
        guards=[admin_guard],
        responses=errors(400, 403, meaning={403: "the caller is not an admin"}),
    )
    async def purge(
        self,
        *,
        queue: FromPath[str],
        current_user: NamedDependency[User],
        pool: NamedDependency[Pool],
        redis: NamedDependency[Redis],
        settings: NamedDependency[Settings],
    ) -> PurgeResponse:
        """Cancel every pending task of `queue` (every user's); running ones go on."""
        purged = await purge_queue(
            queue, user=current_user, pool=pool, redis=redis, ttl_s=settings.retention_s
        )
        return PurgeResponse(queue=queue, purged=purged)


async def purge_queue(queue: str, *, user: User, pool: Pool, redis: Redis, ttl_s: int) -> int:
    """Cancel every pending task of `queue`; how many (InvalidRequest for a bad name)."""
    if not _QUEUE_NAME.fullmatch(queue):
        raise InvalidRequest(f"queue: {queue!r} is not a queue name (A-Z a-z 0-9 _ . -)")
    async with pool.acquire() as connection, connection.transaction():
        # Locked first, in id order: none starts running before the cancel commits.
        pending = await connection.fetch(
            "SELECT id::text AS id FROM tasks WHERE queue = $1 AND status = 'pending'"
            " ORDER BY id FOR UPDATE",
            queue,
        )
        rows = await cancel_open_tasks(connection, [row["id"] for row in pending])
    purged = [row["id"] for row in rows]
    await announce_task_cancels(redis, purged, ttl_s=ttl_s)
    log.warning(
        "queue %s purged by %s: %d pending tasks cancelled",
        queue,
        user.name,
        len(purged),
        extra={"queue": queue, "purged": len(purged), "user_id": user.id},
    )
    return len(purged)
