"""Telling exporters an export was cancelled: a flag for a queued build, a message for a running
one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared.streams import EXPORT_CANCEL_CHANNEL, export_cancelled_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


async def announce_export_cancel(redis: Redis, export_id: str, *, ttl_s: int) -> bool:
    """Set the export's cancelled flag and publish its id, so exporters abort and skip it.

    PostgreSQL already records the cancellation and the tracker ignores a later ExportReady,
    so a Redis failure only means an archive is built to no effect: logged, not raised.
    """
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(export_cancelled_key(export_id), b"1", ex=ttl_s)
            pipe.publish(EXPORT_CANCEL_CHANNEL, export_id)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning(
            "export %s cancelled, but Redis could not be told: %s",
            export_id,
            exc,
            extra={"export_id": export_id},
        )
        return False
    return True
