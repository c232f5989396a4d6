"""GET /metrics: Prometheus text, without authentication (like /health), for scrapers."""

from __future__ import annotations

from asyncpg import Pool
from litestar import Controller, Response, get
from litestar.di import NamedDependency, Provide
from redis.asyncio import Redis

from services.gateway import monitoring
from services.gateway.resources import provide_pool, provide_redis
from shared import metrics


class MetricsController(Controller):
    """The gateway's metrics, and the queues', workers' and jobs' gauges read at each scrape."""

    path = "/"
    tags = ["system"]  # noqa: RUF012 - Litestar reads this class attribute as is
    dependencies = {  # noqa: RUF012
        "redis": Provide(provide_redis, sync_to_thread=False),
        "pool": Provide(provide_pool, sync_to_thread=False),
    }
    signature_namespace = {"Redis": Redis, "Pool": Pool}  # noqa: RUF012

    @get("/metrics", include_in_schema=False)
    async def scrape(
        self, *, redis: NamedDependency[Redis], pool: NamedDependency[Pool]
    ) -> Response[bytes]:
        """Prometheus text exposition format."""
        await monitoring.refresh(pool, redis)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)
