"""The worker registry: every service process keeps a heartbeat hash in Redis while it lives.

A hash per process (`downlink:workers:{consumer}`) is refreshed every HEARTBEAT_S with its
counters and expires EXPIRY_S after the last refresh, so a worker killed with SIGKILL vanishes
from GET /api/v1/workers on its own; a clean shutdown deletes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from shared.metrics import queue_refresher, serve_metrics
from shared.redis_client import hashes_under
from shared.streams import WORKERS_KEY_PREFIX, worker_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.consumer import ConsumerStats, StreamConsumer

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
EXPIRY_S = 30.0


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One live service process, as its last heartbeat described it.

    Attributes:
        service: gateway, downloader, processor or exporter.
        consumer: its consumer name in the stream groups (host-pid).
        host: the machine it runs on.
        pid: its process id there.
        started_at: when it started.
        last_heartbeat: when it last reported (at most HEARTBEAT_S ago, give or take a beat).
        in_flight: deliveries it is handling now.
        processed: deliveries it completed since it started.
        failed: deliveries it gave up on (dead-lettered) since it started.
        retried: failed tries it scheduled again since it started.
    """

    service: str
    consumer: str
    host: str
    pid: int
    started_at: datetime
    last_heartbeat: datetime
    in_flight: int = 0
    processed: int = 0
    failed: int = 0
    retried: int = 0


@contextlib.asynccontextmanager
async def worker_presence(
    redis: Redis,
    service: str,
    consumer: str,
    stats: ConsumerStats | None,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    expiry_s: float = EXPIRY_S,
) -> AsyncIterator[None]:
    """Keep this process registered (with `stats`) for the duration of the block.

    Redis being down only delays the registration: the heartbeat keeps trying.
    """
    key = worker_key(consumer)
    started_at = time.time()
    fixed = {
        "service": service,
        "consumer": consumer,
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "started_at": repr(started_at),
    }
    expiry_ms = int(expiry_s * 1000)

    async def beat() -> None:
        fields = {
            **fixed,
            "last_heartbeat": repr(time.time()),
            "in_flight": str(stats.in_flight if stats else 0),
            "processed": str(stats.processed if stats else 0),
            "failed": str(stats.failed if stats else 0),
            "retried": str(stats.retried if stats else 0),
        }
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # redis-py's Mapping is too narrow
            pipe.pexpire(key, expiry_ms)
            await pipe.execute()

    async def keep_beating() -> None:
        while True:
            try:
                await beat()
            except (RedisError, OSError) as exc:
                log.warning("worker heartbeat failed: %s", exc)
            await asyncio.sleep(heartbeat_s)

    heart = asyncio.create_task(keep_beating(), name=f"heartbeat:{consumer}")
    try:
        yield
    finally:
        heart.cancel()
        await asyncio.gather(heart, return_exceptions=True)
        try:
            # Shielded: a cancelled shutdown must still say goodbye, or the entry lingers.
            await asyncio.shield(redis.delete(key))
        except (RedisError, OSError) as exc:
            log.warning("could not remove worker %s from the registry: %s", consumer, exc)


@contextlib.asynccontextmanager
async def worker_telemetry(
    redis: Redis, service: str, consumer: StreamConsumer, *, metrics_port: int | None, host: str
) -> AsyncIterator[None]:
    """What every worker runs beside its consumer: its heartbeat in the registry and its
    /metrics on host:metrics_port (with its own streams' gauges); no port, no /metrics."""
    refresh = queue_refresher(redis, {consumer.group: tuple(consumer.streams)})
    async with (
        worker_presence(redis, service, consumer.consumer, consumer.stats),
        serve_metrics(metrics_port, host=host, refresh=refresh),
    ):
        yield


async def list_workers(redis: Redis) -> list[WorkerInfo]:
    """Every registered worker whose heartbeat has not expired, by service and consumer."""
    hashes = await hashes_under(redis, WORKERS_KEY_PREFIX)
    workers = [worker for raw in hashes if raw and (worker := _parse(raw)) is not None]
    return sorted(workers, key=lambda w: (w.service, w.consumer))


def _parse(raw: dict[bytes, bytes]) -> WorkerInfo | None:
    fields = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
    try:
        return WorkerInfo(
            service=fields["service"],
            consumer=fields["consumer"],
            host=fields["host"],
            pid=int(fields["pid"]),
            started_at=_time(fields["started_at"]),
            last_heartbeat=_time(fields["last_heartbeat"]),
            in_flight=int(fields.get("in_flight", 0)),
            processed=int(fields.get("processed", 0)),
            failed=int(fields.get("failed", 0)),
            retried=int(fields.get("retried", 0)),
        )
    except (KeyError, ValueError):
        # A half-written hash (an older version's, or one being expired): not a live worker.
        return None


def _time(value: str) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)
