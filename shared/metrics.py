"""Prometheus metrics: the metric objects, gauges gathered at scrape time, and the workers' server.

Counters and histograms live in this process's default registry and are updated where things
happen (the consumer, the downloader, the tracker). What lives elsewhere (stream lengths in
Redis, job counts in PostgreSQL) is read at each scrape into a snapshot, so a scrape always shows
the present. The gateway serves /metrics itself; a worker serves it on DOWNLINK_METRICS_PORT.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.queues import queue_report

if TYPE_CHECKING:
    from prometheus_client import Metric
    from redis.asyncio import Redis

    from shared.queues import QueueReport

log = logging.getLogger(__name__)

# Seconds: from a thumbnail (tens of ms) to a large scene over a slow link (an hour).
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600)

# --- updated where things happen ------------------------------------------------------------

TASKS = Counter(
    "downlink_tasks",
    "Deliveries a consumer handled, by outcome (completed, retried, dead, cancelled, abandoned).",
    ["service", "outcome"],
)
RETRIES = Counter(
    "downlink_retries", "Failed tries scheduled again with backoff.", ["service", "stream"]
)
DEAD_LETTERED = Counter(
    "downlink_dead_lettered",
    "Entries moved to the dead-letter stream (out of tries, or a permanent error).",
    ["service", "stream"],
)
IN_FLIGHT = Gauge("downlink_in_flight", "Deliveries being handled right now.", ["service"])
TASK_DURATION = Histogram(
    "downlink_task_duration_seconds",
    "Time a handler took, by service and outcome.",
    ["service", "outcome"],
    buckets=DURATION_BUCKETS_S,
)
DOWNLOAD_DURATION = Histogram(
    "downlink_download_duration_seconds",
    "Time one download try took, by outcome.",
    ["outcome"],
    buckets=DURATION_BUCKETS_S,
)
PROCESSING_DURATION = Histogram(
    "downlink_processing_duration_seconds",
    "Time one processing command (per-file steps or a composite) took, by outcome.",
    ["outcome"],
    buckets=DURATION_BUCKETS_S,
)
EXPORT_DURATION = Histogram(
    "downlink_export_duration_seconds",
    "Time one archive build took, by outcome.",
    ["outcome"],
    buckets=DURATION_BUCKETS_S,
)
DOWNLOADED_BYTES = Counter(
    "downlink_downloaded_bytes", "Bytes this downloader stored (completed files only)."
)
# The tracker's view (gateway): each event counted once, whatever worker sent it.
FILES_FINISHED = Counter(
    "downlink_files_finished", "Files that reached a final state, by status.", ["status"]
)
JOBS_FINISHED = Counter(
    "downlink_jobs_finished", "Jobs that reached a final state, by status.", ["status"]
)
BYTES_DOWNLOADED = Counter("downlink_bytes_downloaded", "Bytes of the files recorded as completed.")

# The service-specific duration histogram of each consumer group, beside the generic one.
_NAMED_DURATIONS = {
    "downloader": DOWNLOAD_DURATION,
    "processor": PROCESSING_DURATION,
    "exporter": EXPORT_DURATION,
}


def observe_task(service: str, outcome: str, seconds: float) -> None:
    """Count one handled delivery of `service` (its consumer group) and time it."""
    TASKS.labels(service, outcome).inc()
    TASK_DURATION.labels(service, outcome).observe(seconds)
    named = _NAMED_DURATIONS.get(service)
    if named is not None:
        named.labels(outcome).observe(seconds)


# --- gathered at scrape time ----------------------------------------------------------------


class SnapshotCollector(Collector):
    """Metric families computed elsewhere, replaced whole per source so a scrape never sees a
    half-updated set (and a stream that vanished leaves no stale series behind)."""

    def __init__(self) -> None:
        self._families: dict[str, list[Metric]] = {}

    def replace(self, source: str, families: Iterable[Metric]) -> None:
        self._families[source] = list(families)

    def collect(self) -> Iterable[Metric]:
        for families in list(self._families.values()):
            yield from families

    def describe(self) -> Iterable[Metric]:
        # Names vary with what is found at scrape time; nothing to check at registration.
        return []


SNAPSHOT = SnapshotCollector()
REGISTRY.register(SNAPSHOT)


def queue_families(report: QueueReport) -> list[Metric]:
    """Gauges of the streams: length, pending, lag, consumers, oldest pending age, dead letters."""
    length = GaugeMetricFamily(
        "downlink_stream_length", "Entries in the stream.", labels=["stream"]
    )
    pending = GaugeMetricFamily(
        "downlink_stream_pending",
        "Entries delivered to the group and not acknowledged yet.",
        labels=["stream", "group"],
    )
    lag = GaugeMetricFamily(
        "downlink_stream_lag",
        "Entries the group has not read yet (absent when Redis cannot tell).",
        labels=["stream", "group"],
    )
    consumers = GaugeMetricFamily(
        "downlink_stream_consumers", "Consumers the group knows.", labels=["stream", "group"]
    )
    oldest = GaugeMetricFamily(
        "downlink_stream_oldest_pending_seconds",
        "Age of the group's oldest unacknowledged entry (0 when none is pending).",
        labels=["stream", "group"],
    )
    seen: set[str] = set()
    for row in report.queues:
        if row.stream not in seen:
            seen.add(row.stream)
            length.add_metric([row.stream], row.length)
        pending.add_metric([row.stream, row.group], row.pending)
        if row.lag is not None:
            lag.add_metric([row.stream, row.group], row.lag)
        consumers.add_metric([row.stream, row.group], row.consumers)
        oldest.add_metric([row.stream, row.group], row.oldest_pending_s or 0.0)
    dead = GaugeMetricFamily("downlink_dead_letters", "Entries on the dead-letter stream.")
    dead.add_metric([], report.dead_letters)
    delayed = GaugeMetricFamily(
        "downlink_delayed_retries", "Failed entries waiting for their backoff to end."
    )
    delayed.add_metric([], report.delayed_retries)
    return [length, pending, lag, consumers, oldest, dead, delayed]


def queue_refresher(
    redis: Redis, groups: Mapping[str, Sequence[str]]
) -> Callable[[], Awaitable[None]]:
    """A scrape-time refresh of the stream gauges of `groups` (group -> its streams)."""

    async def refresh() -> None:
        SNAPSHOT.replace("queues", queue_families(await queue_report(redis, groups)))

    return refresh


def count_family(
    name: str, documentation: str, label: str, counts: dict[str, int], known: Sequence[str] = ()
) -> GaugeMetricFamily:
    """A gauge with one series per value of `label`; values in `known` show up as 0 when absent."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value in dict.fromkeys([*known, *sorted(counts)]):
        family.add_metric([value], counts.get(value, 0))
    return family


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of this process and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- a worker's /metrics --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_metrics(
    port: int | None,
    *,
    host: str = "127.0.0.1",
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[int | None]:
    """Serve GET /metrics on host:port for the duration of the block; yields the bound port.

    `refresh` runs before each scrape (the worker's stream gauges). No port, nothing served;
    a port in use is logged and the worker runs on without metrics rather than not at all.
    """
    if port is None:
        yield None
        return

    async def metrics(_: web.Request) -> web.Response:
        if refresh is not None:
            try:
                await refresh()
            except Exception as exc:
                # A scrape during a Redis outage still shows the process's own metrics.
                log.warning("metrics refresh failed: %s", exc)
        body, content_type = exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    bound: int | None = None
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            log.warning("cannot serve metrics on %s:%d: %s", host, port, exc)
        else:
            # Port 0 asks for any free port; the runner knows which one it got.
            bound = int(runner.addresses[0][1]) if runner.addresses else port
            log.info("metrics on http://%s:%d/metrics", host, bound)
        yield bound
    finally:
        await runner.cleanup()
