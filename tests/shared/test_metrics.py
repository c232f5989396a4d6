"""Metrics: counters where things happen, stream gauges from real Redis, a worker's /metrics."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from shared.consumer import ensure_groups
from shared.queues import GroupStats, QueueReport, queue_report
from shared.redis_client import open_redis
from shared.streams import DEAD_STREAM, DELAYED_KEY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis


@pytest.fixture(autouse=True)
def fresh_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scrape-time gauges other tests of this process left behind are not this test's."""
    monkeypatch.setattr(metrics.SNAPSHOT, "_families", {})


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with open_redis(redis_url) as client:
        yield client


def _value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


def _scrape() -> str:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return body.decode()


def test_a_task_counts_under_its_service_and_its_named_histogram() -> None:
    before = _scrape()
    metrics.observe_task("downloader", "completed", 1.5)
    metrics.observe_task("processor", "dead", 0.2)
    metrics.observe_task("tracker", "completed", 0.01)
    after = _scrape()

    def delta(name: str, **labels: str) -> float:
        return (_value(after, name, **labels) or 0) - (_value(before, name, **labels) or 0)

    assert delta("downlink_tasks_total", service="downloader", outcome="completed") == 1
    assert delta("downlink_task_duration_seconds_sum", service="downloader") == 1.5
    assert delta("downlink_download_duration_seconds_count", outcome="completed") == 1
    assert delta("downlink_download_duration_seconds_bucket", outcome="completed", le="2.5") == 1
    assert delta("downlink_download_duration_seconds_bucket", outcome="completed", le="1.0") == 0
    assert delta("downlink_processing_duration_seconds_count", outcome="dead") == 1
    assert delta("downlink_tasks_total", service="tracker", outcome="completed") == 1


def test_queue_gauges_replace_the_previous_snapshot() -> None:
    report = QueueReport(
        queues=[
            GroupStats(
                stream="s:a",
                group="g1",
                length=5,
                pending=2,
                lag=3,
                consumers=1,
                oldest_pending_s=4.5,
            ),
            GroupStats(stream="s:a", group="g2", length=5, pending=0, lag=None, consumers=0),
        ],
        dead_letters=7,
        delayed_retries=1,
    )
    metrics.SNAPSHOT.replace("test-queues", metrics.queue_families(report))
    text = _scrape()
    assert _value(text, "downlink_stream_length", stream="s:a") == 5
    assert _value(text, "downlink_stream_pending", stream="s:a", group="g1") == 2
    assert _value(text, "downlink_stream_lag", stream="s:a", group="g1") == 3
    assert _value(text, "downlink_stream_lag", stream="s:a", group="g2") is None  # unknown
    assert _value(text, "downlink_stream_oldest_pending_seconds", group="g1") == 4.5
    assert _value(text, "downlink_dead_letters") == 7
    assert _value(text, "downlink_delayed_retries") == 1

    # A stream that vanished leaves no series behind.
    metrics.SNAPSHOT.replace("test-queues", [])
    assert _value(_scrape(), "downlink_stream_length", stream="s:a") is None


def test_count_family_shows_known_values_as_zero() -> None:
    family = metrics.count_family("x_jobs", "doc", "status", {"failed": 2}, known=("done",))
    assert [(s.labels["status"], s.value) for s in family.samples] == [("done", 0), ("failed", 2)]


async def test_queue_report_reads_length_pending_lag_and_age(redis: Redis) -> None:
    await ensure_groups(redis, {"workers": ("q:work",), "audit": ("q:work",)})
    for n in range(5):
        await redis.xadd("q:work", {"n": str(n)})
    await redis.xreadgroup("workers", "c1", {"q:work": ">"}, count=2)  # two in flight
    await redis.xadd(DEAD_STREAM, {"letter": "{}"})
    await redis.zadd(DELAYED_KEY, {"m1": 1, "m2": 2})

    report = await queue_report(redis, {"workers": ("q:work", "q:never-written")})
    rows = {(row.stream, row.group): row for row in report.queues}
    work = rows["q:work", "workers"]
    assert (work.length, work.pending, work.lag, work.consumers) == (5, 2, 3, 1)
    assert work.oldest_pending_s is not None
    assert 0 <= work.oldest_pending_s < 5
    # A group on the stream that was not asked for is reported too, with its own backlog.
    assert rows["q:work", "audit"].lag == 5
    assert rows["q:work", "audit"].oldest_pending_s is None
    # A stream nobody wrote to yet is an empty queue, not an error.
    empty = rows["q:never-written", "workers"]
    assert (empty.length, empty.pending, empty.lag, empty.consumers) == (0, 0, 0, 0)
    assert (report.dead_letters, report.delayed_retries) == (1, 2)


async def test_a_worker_serves_metrics_on_its_port(redis: Redis) -> None:
    refreshed: list[int] = []

    async def refresh() -> None:
        refreshed.append(1)
        report = await queue_report(redis, {"workers": ("q:port",)})
        metrics.SNAPSHOT.replace("test-port", metrics.queue_families(report))

    await redis.xadd("q:port", {"n": "1"})
    async with metrics.serve_metrics(0, refresh=refresh) as port:
        assert port
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
    metrics.SNAPSHOT.replace("test-port", [])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert refreshed == [1]
    assert _value(response.text, "downlink_stream_length", stream="q:port") == 1
    assert _value(response.text, "downlink_stream_lag", stream="q:port", group="workers") == 1


async def test_a_failing_refresh_still_serves_the_process_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refresh() -> None:
        raise ConnectionError("redis is down")

    async with (
        metrics.serve_metrics(0, refresh=refresh) as port,
        httpx.AsyncClient(trust_env=False) as client,
    ):
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert "downlink_tasks" in response.text
    assert "redis is down" in caplog.text


async def test_no_port_serves_nothing_and_a_taken_port_is_only_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with metrics.serve_metrics(None) as port:
        assert port is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING):
            async with metrics.serve_metrics(busy) as port:
                assert port is None
    assert "cannot serve metrics" in caplog.text
