"""Tracing and logging setup: JSON log lines that carry the current trace and span ids.

One trace per job: the gateway's request span is the root; the trace context rides in message
headers (`traceparent`) from the outbox through every stream, and where work fans in (a job's
end, an archive of several jobs) spans link to the spans of their inputs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# A message whose work fans in carries the `traceparent`s of its inputs here, comma-separated;
# the consumer's span links to each of them.
LINKS_HEADER = "downlink-links"
# More links than this say nothing more to someone reading the trace; they only cost memory.
MAX_LINKS = 128

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Log extras may hold anything; whatever JSON cannot carry is logged as its str().
_ENCODER = msgspec.json.Encoder(enc_hook=str)
_TRUE = {"1", "true", "yes", "on"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with trace_id/span_id of the span active when it was logged.

    Both keys are on every line (null outside a span), so log pipelines see one schema.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        span_context = trace.get_current_span().get_span_context()
        valid = span_context.is_valid
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
            "trace_id": format(span_context.trace_id, "032x") if valid else None,
            "span_id": format(span_context.span_id, "016x") if valid else None,
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line).decode("utf-8", "replace")


def setup_logging(service: str, level: str) -> None:
    """Route every logger (ours, FastStream's, Litestar's, uvicorn's) to JSON lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name in ("uvicorn", "uvicorn.error", "faststream", "faststream.access.redis"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def otlp_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether spans should leave the process: an OTLP endpoint is set and nothing forbids it."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def create_tracer_provider(service: str, *, install: bool = True) -> TracerProvider:
    """A provider for `service`; spans leave the process only when OTLP is configured.

    The standard OTEL_* variables apply (endpoint, headers, timeout, OTEL_BSP_* batching,
    OTEL_RESOURCE_ATTRIBUTES). With `install` it also becomes the process's global provider,
    so module-level tracers (`trace.get_tracer(...)` in handlers) record into it; services do
    that once at start, tests pass their own provider instead.
    """
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": f"downlink-{service}",
                "service.namespace": "downlink",
                "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
            }
        )
    )
    if otlp_configured():
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            logging.getLogger(__name__).warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http "
                "is not installed; spans stay in the process"
            )
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if install:
        trace.set_tracer_provider(provider)
    return provider


def trace_headers() -> dict[str, str]:
    """The current trace context as message headers (`traceparent`), empty outside a span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def traceparent(span_context: trace.SpanContext) -> str:
    """The W3C `traceparent` of a span context."""
    flags = int(span_context.trace_flags)
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"


def span_context_of(header: str) -> trace.SpanContext | None:
    """The remote span context a `traceparent` names, or None when it is malformed."""
    context = propagate.extract({"traceparent": header.strip()})
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


def link_header(span_contexts: Iterable[trace.SpanContext]) -> dict[str, str]:
    """Message headers that make the consumer's span link to each of `span_contexts`."""
    parents = [traceparent(c) for c in span_contexts if c.is_valid][:MAX_LINKS]
    return {LINKS_HEADER: ",".join(parents)} if parents else {}


def links_from(headers: Mapping[str, Any]) -> list[trace.Link]:
    """The span links a message's LINKS_HEADER asks for (none when absent or malformed)."""
    raw = headers.get(LINKS_HEADER)
    if not isinstance(raw, str) or not raw:
        return []
    links = []
    for part in raw.split(",")[:MAX_LINKS]:
        span_context = span_context_of(part)
        if span_context is not None:
            links.append(trace.Link(span_context))
    return links
