"""Observability end to end: one trace per job, /metrics, workers, queues, history, live events.

Real services as subprocesses: spans are exported over OTLP/HTTP to a receiver in the test,
metrics are scraped and parsed with prometheus_client's parser, and a SIGKILLed worker is
watched disappearing from the registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

SUBMIT = "/api/v1/downloads/download"
SERVER, CONSUMER, PRODUCER = 2, 5, 4  # OTLP span kinds
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def _traced_env(otlp: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
    }


def _submit(client: httpx.Client, urls: list[str], **body: Any) -> str:
    response = client.post(SUBMIT, json={"urls": urls, **body})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _processor_processes() -> bool:
    """Whether services/processor does real work yet (the processor issue may land later)."""
    return (ROOT / "services" / "processor" / "handlers.py").exists()


# --- one trace per job ----------------------------------------------------------------------


def _by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.span_id: span for span in spans}


def _ancestors(span: ReceivedSpan, index: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_span_id and span.parent_span_id in index:
        span = index[span.parent_span_id]
        chain.append(span)
    return chain


def _rooted(span: ReceivedSpan, index: dict[str, ReceivedSpan]) -> bool:
    """Whether every ancestor of `span` up to its trace's root has been received."""
    while span.parent_span_id:
        if span.parent_span_id not in index:
            return False  # exported later by another process's batch: not here yet
        span = index[span.parent_span_id]
    return True


def test_one_job_is_one_trace_across_the_gateway_and_the_downloader(
    pipeline_factory: PipelineFactory, file_server: FileServer, otlp: OtlpReceiver
) -> None:
    env = _traced_env(otlp)
    stack = pipeline_factory(**env)
    stack.start_downloader(**env)
    client = stack.client("alice")
    file_server.add_file("B04.tif", size=50_000)
    file_server.add_file("B08.tif", size=70_000)
    job_id = _submit(client, [file_server.file_url("B04.tif"), file_server.file_url("B08.tif")])
    assert stack.wait_job(client, job_id)["status"] == "completed"

    def complete(spans: list[ReceivedSpan]) -> bool:
        index = _by_id(spans)
        downloads = [s for s in spans if s.name == "download"]
        finished = [s for s in spans if s.attributes.get("downlink.event") == "job.finished"]
        ends = [s for s in spans if s.attributes.get("downlink.event") == "file.downloaded"]
        return (
            len(downloads) == 2
            and len(ends) == 2
            and bool(finished)
            and all(_rooted(s, index) for s in [*downloads, *ends, *finished])
        )

    spans = otlp.wait_for(complete, timeout=20)
    request = next(
        (s for s in spans if s.kind == SERVER and s.name.startswith("POST /api/v1/downloads")),
        None,
    )
    assert request is not None, sorted({(s.service, s.name) for s in spans})
    trace = [s for s in spans if s.trace_id == request.trace_id]
    index = _by_id(trace)
    services = {s.service for s in trace}
    assert {"downlink-gateway", "downlink-downloader"} <= services

    # Every download: its consumer span is its parent, and the request is an ancestor, through
    # the relay's publish span in the gateway.
    downloads = [s for s in trace if s.name == "download"]
    assert len(downloads) == 2, [(s.service, s.name) for s in spans if s.name == "download"]
    for download in downloads:
        assert download.service == "downlink-downloader"
        assert download.attributes["downlink.job_id"] == job_id
        assert download.attributes["url.host"] == "127.0.0.1"
        assert download.attributes["downlink.attempt"] == 1
        assert download.attributes["downlink.bytes"] in (50_000, 70_000)
        assert download.attributes["downlink.file_id"]
        chain = _ancestors(download, index)
        consumer = chain[0]
        assert consumer.kind == CONSUMER
        assert consumer.service == "downlink-downloader"
        assert consumer.name.startswith("downlink:downloads:")
        publish = next(s for s in chain if s.kind == PRODUCER)
        assert publish.service == "downlink-gateway"  # the relay
        assert request in chain

    # The tracker consumed the downloader's events in the same trace, and the job's end links
    # to the end of each of its files (where the work fans in).
    tracked = [s for s in trace if s.name == "downlink:events process"]
    assert {s.service for s in tracked} == {"downlink-gateway"}
    from_downloader = [
        s for s in tracked if any(p.service == "downlink-downloader" for p in _ancestors(s, index))
    ]
    assert from_downloader
    finished = next(s for s in tracked if s.attributes.get("downlink.event") == "job.finished")
    file_ends = {s.span_id for s in tracked if s.attributes["downlink.event"] == "file.downloaded"}
    assert len(file_ends) == 2
    assert {span_id for _, span_id in finished.links} == file_ends
    assert {trace_id for trace_id, _ in finished.links} == {request.trace_id}


@pytest.mark.skipif(not _processor_processes(), reason="services/processor does no work yet")
def test_the_processor_joins_the_job_trace(
    pipeline_factory: PipelineFactory, file_server: FileServer, otlp: OtlpReceiver
) -> None:
    env = _traced_env(otlp)
    stack = pipeline_factory(**env)
    stack.start_downloader(**env)
    stack.start_processor(**env)
    client = stack.client("alice")
    file_server.add_file("notes.txt", data=b"not a raster\n" * 100)
    job_id = _submit(client, [file_server.file_url("notes.txt")], process=["metadata"])
    stack.wait_job(client, job_id, timeout=60)

    def processed(spans: list[ReceivedSpan]) -> bool:
        index = _by_id(spans)
        steps = [s for s in spans if s.name == "process.file"]
        return bool(steps) and all(_rooted(s, index) for s in steps)

    spans = otlp.wait_for(processed, timeout=30)
    request = next(
        s for s in spans if s.kind == SERVER and s.name.startswith("POST /api/v1/downloads")
    )
    trace = [s for s in spans if s.trace_id == request.trace_id]
    index = _by_id(trace)
    work = [s for s in trace if s.service == "downlink-processor" and s.kind == CONSUMER]
    assert work, sorted({(s.service, s.name) for s in spans})
    for span in work:
        chain = _ancestors(span, index)
        assert request in chain
        assert any(s.service == "downlink-downloader" for s in chain)
    [step] = [s for s in trace if s.name == "process.file"]
    assert index[step.parent_span_id] in work
    assert step.attributes["downlink.job_id"] == job_id
    assert step.attributes["downlink.file_id"]


# --- metrics --------------------------------------------------------------------------------


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`; None when absent."""
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


def test_metrics_count_the_job_just_run(pipeline: Pipeline, file_server: FileServer) -> None:
    metrics_port = free_port()
    pipeline.start_downloader(DOWNLINK_METRICS_PORT=str(metrics_port))
    client = pipeline.client("alice")
    sizes = [10_000, 20_000, 30_000]
    urls = [file_server.add_file(f"m{n}.tif", size=size)[0] for n, size in enumerate(sizes)]
    missing = file_server.status_url(404)
    job_id = _submit(client, [*urls, missing])
    assert pipeline.wait_job(client, job_id)["status"] == "partial"

    scrape = httpx.Client(base_url=pipeline.url, trust_env=False, timeout=10)
    deadline = time.monotonic() + 15
    while True:  # JobFinished reaches the tracker a moment after the job's row is final
        response = scrape.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        families = _families(response.text)
        if _value(families, "downlink_jobs_finished_total", status="partial") == 1:
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    scrape.close()

    # From PostgreSQL: every job and file on record, by status.
    assert _value(families, "downlink_jobs", status="partial") == 1
    assert _value(families, "downlink_jobs", status="completed") == 0
    assert _value(families, "downlink_files", status="completed") == 3
    assert _value(families, "downlink_files", status="failed") == 1
    assert _value(families, "downlink_stored_bytes") == sum(sizes)
    # From the tracker: what it recorded since it started.
    assert _value(families, "downlink_files_finished_total", status="completed") == 3
    assert _value(families, "downlink_files_finished_total", status="failed") == 1
    assert _value(families, "downlink_bytes_downloaded_total") == sum(sizes)
    assert _value(families, "downlink_tasks_total", service="tracker", outcome="completed")
    # From Redis: the lanes are drained, the 404 is a dead letter, both services are alive.
    lane = "downlink:downloads:normal"
    # (Its length depends on when the reconciler last trimmed what every group acknowledged.)
    assert _value(families, "downlink_stream_length", stream=lane) is not None
    assert _value(families, "downlink_stream_pending", stream=lane, group="downloader") == 0
    assert _value(families, "downlink_stream_lag", stream=lane, group="downloader") == 0
    assert _value(families, "downlink_dead_letters") == 1
    assert _value(families, "downlink_workers", service="downloader") == 1
    assert _value(families, "downlink_workers", service="gateway") == 1

    # The downloader's own port: its work, its durations, its group's streams.
    worker = _families(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", trust_env=False).text)
    assert _value(worker, "downlink_downloaded_bytes_total") == sum(sizes)
    assert _value(worker, "downlink_tasks_total", service="downloader", outcome="completed") == 3
    assert _value(worker, "downlink_tasks_total", service="downloader", outcome="dead") == 1
    assert _value(worker, "downlink_dead_lettered_total", service="downloader", stream=lane) == 1
    assert _value(worker, "downlink_download_duration_seconds_count", outcome="completed") == 3
    assert _value(worker, "downlink_in_flight", service="downloader") == 0
    assert _value(worker, "downlink_stream_lag", stream=lane, group="downloader") == 0


# --- workers --------------------------------------------------------------------------------


def _workers(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/api/v1/workers")
    assert response.status_code == 200, response.text
    workers: list[dict[str, Any]] = response.json()["workers"]
    return workers


@pytest.mark.slow
def test_workers_register_and_a_killed_one_vanishes_within_35_s(pipeline: Pipeline) -> None:
    first = pipeline.start_downloader()
    second = pipeline.start_downloader()
    admin = pipeline.client("root", admin=True)
    assert pipeline.client("alice").get("/api/v1/workers").status_code == 403

    deadline = time.monotonic() + 10
    while len(workers := _workers(admin)) < 3:
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)
    assert pipeline.gateway is not None
    by_pid = {w["pid"]: w for w in workers}
    assert by_pid.keys() == {pipeline.gateway.pid, first.pid, second.pid}
    assert by_pid[pipeline.gateway.pid]["service"] == "gateway"
    for process in (first, second):
        entry = by_pid[process.pid]
        assert entry["service"] == "downloader"
        assert entry["consumer"] == f"{entry['host']}-{process.pid}"
        assert entry["in_flight"] == 0
        assert entry["started_at"] <= entry["last_heartbeat"]
        assert {"processed", "failed"} <= entry.keys()

    # The same list for people: `downlink workers`.
    shown = subprocess.run(
        [sys.executable, "-m", "services.cli", "workers", "--api", pipeline.url],
        env={
            **os.environ,
            **pipeline.env,
            "DOWNLINK_TOKEN": pipeline.token("root", admin=True),
            "COLUMNS": "250",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "3 live worker(s)" in shown
    for process in (first, second):
        assert f"-{process.pid} " in shown

    first.kill()  # SIGKILL: no goodbye; the heartbeat simply stops
    killed_at = time.monotonic()
    while first.pid in {w["pid"] for w in _workers(admin)}:
        assert time.monotonic() - killed_at < 35, "a SIGKILLed worker is still listed"
        time.sleep(0.5)
    assert {w["pid"] for w in _workers(admin)} == {pipeline.gateway.pid, second.pid}

    second.terminate()  # a clean stop says goodbye at once
    second.wait(timeout=20)
    assert {w["pid"] for w in _workers(admin)} == {pipeline.gateway.pid}


# --- queues ---------------------------------------------------------------------------------


def _queue(report: dict[str, Any], stream: str, group: str) -> dict[str, Any]:
    row: dict[str, Any] = next(
        r for r in report["queues"] if r["stream"] == stream and r["group"] == group
    )
    return row


def test_the_queues_route_reports_a_backlog(pipeline: Pipeline, file_server: FileServer) -> None:
    admin = pipeline.client("root", admin=True)
    alice = pipeline.client("alice")
    assert alice.get("/api/v1/queues").status_code == 403
    lane = "downlink:downloads:normal"

    # No downloader yet: the job's four commands wait in the lane, unread.
    slow = [file_server.add_file(f"slow{n}.tif", size=400_000)[0] for n in range(4)]
    job_id = _submit(alice, [f"{url}?rate=100000" for url in slow])
    deadline = time.monotonic() + 10
    while (row := _queue(admin.get("/api/v1/queues").json(), lane, "downloader"))["lag"] < 4:
        assert time.monotonic() < deadline, row
        time.sleep(0.1)
    assert row["length"] == 4
    assert row["pending"] == 0
    assert row["oldest_pending_s"] is None

    # One slot: one entry in flight (pending, and getting older), three still unread.
    pipeline.start_downloader(DOWNLINK_DOWNLOAD_CONCURRENCY="1")
    deadline = time.monotonic() + 15
    while (report := admin.get("/api/v1/queues").json()) and (
        _queue(report, lane, "downloader")["pending"] != 1
        or _queue(report, lane, "downloader")["lag"] != 3
    ):
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    row = _queue(report, lane, "downloader")
    assert row["consumers"] == 1
    assert row["oldest_pending_s"] >= 0
    assert _queue(report, "downlink:events", "tracker")["lag"] is not None
    assert report["dead_letters"] == 0
    assert alice.post(f"/api/v1/downloads/jobs/{job_id}/cancel", json={}).status_code == 200

    # A permanent failure lands on the dead-letter stream, and the report counts it.
    failed = _submit(alice, [file_server.status_url(404)], priority=9)
    pipeline.wait_job(alice, failed)
    deadline = time.monotonic() + 10
    while (report := admin.get("/api/v1/queues").json())["dead_letters"] != 1:
        assert time.monotonic() < deadline, report
        time.sleep(0.1)


# --- execution history ----------------------------------------------------------------------


def test_history_shows_each_try_of_a_retried_file_and_survives_a_restart(
    pipeline_factory: PipelineFactory, file_server: FileServer
) -> None:
    stack = pipeline_factory(DOWNLINK_RETRY_BACKOFF="0.2")
    stack.start_downloader()
    alice, bob = stack.client("alice"), stack.client("bob")
    admin = stack.client("root", admin=True)
    file_server.add_file("flaky.tif", size=30_000)
    job_id = _submit(alice, [file_server.flaky_url("flaky.tif", fail=2, code=503)])
    assert stack.wait_job(alice, job_id)["status"] == "completed"

    def history(client: httpx.Client, **params: str | int) -> dict[str, Any]:
        response = client.get("/api/v1/executions", params={"job_id": job_id, **params})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    deadline = time.monotonic() + 10
    while (page := history(alice))["total"] < 3 or any(
        run["status"] == "running" for run in page["executions"]
    ):
        assert time.monotonic() < deadline, page
        time.sleep(0.1)
    runs = sorted(page["executions"], key=lambda run: run["attempt"])
    assert [(run["task"], run["attempt"], run["status"]) for run in runs] == [
        ("download", 1, "retried"),
        ("download", 2, "retried"),
        ("download", 3, "completed"),
    ]
    assert {run["file_id"] for run in runs} == {runs[0]["subject_id"]}
    for run in runs:
        assert run["job_id"] == job_id
        assert run["worker"]
        assert run["duration_s"] is not None
        assert run["finished_at"] >= run["started_at"]
    assert "503" in runs[0]["error"]
    assert runs[2]["error"] is None

    assert history(alice, status="retried")["total"] == 2
    assert len(history(alice, per_page=2)["executions"]) == 2
    assert history(alice, per_page=2, page=2)["executions"][0]["attempt"] == 1  # newest first
    assert history(bob)["total"] == 0  # another user's runs are not theirs to see
    assert history(admin)["total"] == 3
    assert alice.get("/api/v1/executions", params={"status": "bogus"}).status_code == 400

    # The history is in PostgreSQL: a restart of the gateway forgets nothing.
    assert stack.gateway is not None
    stack.gateway.stop()
    stack.start_gateway()
    assert history(alice)["executions"] == page["executions"]


# --- live progress --------------------------------------------------------------------------


def _read_events(response: httpx.Response) -> list[dict[str, Any]]:
    """Parse an SSE body into events (id, event, data); comments are left out."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                events.append(current)
            current = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        current[name] = value.removeprefix(" ")
    return [
        {"id": int(e["id"]), "event": e["event"], "data": json.loads(e["data"])} for e in events
    ]


def test_live_events_arrive_in_order_and_resume_from_last_event_id(
    pipeline: Pipeline, file_server: FileServer
) -> None:
    client = pipeline.client("alice")
    file_server.add_file("a.tif", size=20_000)
    file_server.add_file("b.tif", size=600_000)
    urls = [file_server.file_url("a.tif"), file_server.file_url("b.tif", rate=600_000)]
    job_id = _submit(client, urls)
    path = f"/api/v1/downloads/jobs/{job_id}/events"
    assert pipeline.client("bob").get(path).status_code == 404

    # Connected before any downloader runs: everything arrives live, and the stream ends itself.
    with client.stream("GET", path, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        pipeline.start_downloader()
        live = _read_events(response)

    ids = [event["id"] for event in live]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    kinds = [event["event"] for event in live]
    assert kinds[-1] == "job.finished"
    assert live[-1]["data"]["status"] == "completed"
    assert kinds.count("file.downloaded") == 2
    assert "file.progress" in kinds
    by_file: dict[str, list[dict[str, Any]]] = {}
    for event in live:
        if "file_id" in event["data"]:
            by_file.setdefault(event["data"]["file_id"], []).append(event)
    slow, fast = sorted(by_file.values(), key=len, reverse=True)
    # The slow file (a second at 600 kB/s) announces its start, then progress, then its end.
    assert slow[0]["event"] == "file.started"
    assert slow[-1]["event"] == "file.downloaded"
    assert {e["event"] for e in slow[1:-1]} == {"file.progress"}
    assert slow[-1]["data"]["started_at"] is None
    # The fast one ends within the progress interval: one event, carrying its start.
    assert [e["event"] for e in fast] == ["file.downloaded"]
    assert fast[0]["data"]["started_at"] <= fast[0]["data"]["at"]
    assert all(event["data"]["job_id"] == job_id for event in live)

    # A reconnect with Last-Event-ID gets what came after it, the job's end included.
    resume_after = live[1]["id"]
    with client.stream(
        "GET", path, headers={"Last-Event-ID": str(resume_after)}, timeout=30
    ) as response:
        resumed = _read_events(response)
    assert resumed
    assert all(event["id"] > resume_after for event in resumed)
    assert resumed[-1]["event"] == "job.finished"

    def durable(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
        return [(e["id"], e["event"]) for e in events if e["event"] != "file.progress"]

    assert durable(resumed) == [e for e in durable(live) if e[0] > resume_after]

    # After the end, a plain connection replays the whole log and closes.
    with client.stream("GET", path, timeout=30) as response:
        replayed = _read_events(response)
    assert durable(replayed) == durable(live)


def test_an_open_event_stream_does_not_hold_up_a_gateway_shutdown(
    pipeline_factory: PipelineFactory, file_server: FileServer
) -> None:
    stack = pipeline_factory()
    client = stack.client("alice")
    job_id = _submit(client, [file_server.file_url("never-fetched.tif")])  # no downloader runs
    with client.stream("GET", f"/api/v1/downloads/jobs/{job_id}/events", timeout=60) as response:
        assert response.status_code == 200
        assert stack.gateway is not None
        stack.gateway.terminate()
        began = time.monotonic()
        for _ in response.iter_lines():
            pass  # the stream ends as the shutdown begins; the client would reconnect
        assert time.monotonic() - began < 5
    stack.gateway.wait(timeout=15)  # uvicorn re-raises the SIGTERM once it shut down cleanly
    assert "Application shutdown complete" in stack.gateway.log_text()
