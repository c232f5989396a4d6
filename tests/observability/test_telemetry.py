"""Telemetry setup: JSON log lines with trace ids, OTLP only when configured, link headers."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared.telemetry import (
    LINKS_HEADER,
    MAX_LINKS,
    JsonFormatter,
    create_tracer_provider,
    link_header,
    links_from,
    otlp_configured,
    span_context_of,
    traceparent,
)
from tests.observability.otlp_receiver import OtlpReceiver


def _line(formatter: JsonFormatter, message: str, **extra: object) -> dict[str, object]:
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": message, **extra})
    parsed: dict[str, object] = json.loads(formatter.format(record))
    return parsed


def test_every_log_line_carries_the_trace_and_span_ids(tracer_provider: TracerProvider) -> None:
    formatter = JsonFormatter("downloader")
    outside = _line(formatter, "idle")
    assert outside["trace_id"] is None
    assert outside["span_id"] is None
    with tracer_provider.get_tracer("t").start_as_current_span("work") as span:
        inside = _line(formatter, "busy %s", args=("now",), job_id="j-1")
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["msg"] == "busy now"
    assert (inside["service"], inside["level"], inside["job_id"]) == ("downloader", "INFO", "j-1")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_spans_leave_the_process_only_when_otlp_is_configured(
    environ: dict[str, str], expected: bool
) -> None:
    assert otlp_configured(environ) is expected


def test_without_an_endpoint_nothing_is_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    provider = create_tracer_provider("test", install=False)
    try:
        assert provider._active_span_processor._span_processors == ()
        assert provider.resource.attributes["service.name"] == "downlink-test"
    finally:
        provider.shutdown()


def test_with_an_endpoint_spans_are_exported_over_otlp_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        provider = create_tracer_provider("test", install=False)
        try:
            with provider.get_tracer("t").start_as_current_span("hello") as span:
                span.set_attribute("downlink.job_id", "j-1")
            assert provider.force_flush(5_000)
        finally:
            provider.shutdown()
        [received] = [s for s in receiver.snapshot() if s.name == "hello"]
    assert received.service == "downlink-test"
    assert received.attributes == {"downlink.job_id": "j-1"}


def test_a_link_header_round_trips_to_span_links(tracer_provider: TracerProvider) -> None:
    tracer = tracer_provider.get_tracer("t")
    contexts = []
    for name in ("a", "b"):
        with tracer.start_as_current_span(name) as span:
            contexts.append(span.get_span_context())
    header = link_header(contexts)
    assert header[LINKS_HEADER].count(",") == 1
    links = links_from(header)
    assert [(link.context.trace_id, link.context.span_id) for link in links] == [
        (c.trace_id, c.span_id) for c in contexts
    ]
    assert all(link.context.is_remote for link in links)
    parsed = span_context_of(traceparent(contexts[0]))
    assert parsed is not None
    assert parsed.trace_id == contexts[0].trace_id


def test_bad_link_headers_give_no_links() -> None:
    assert links_from({}) == []
    assert links_from({LINKS_HEADER: ""}) == []
    assert links_from({LINKS_HEADER: "garbage,00-zz-yy-01"}) == []
    assert link_header([trace.INVALID_SPAN_CONTEXT]) == {}
    assert span_context_of("nonsense") is None


def test_links_are_capped(tracer_provider: TracerProvider) -> None:
    with tracer_provider.get_tracer("t").start_as_current_span("x") as span:
        context = span.get_span_context()
    header = link_header([context] * (MAX_LINKS + 10))
    assert len(links_from(header)) == MAX_LINKS
