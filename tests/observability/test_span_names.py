"""HTTP server spans are named `{method} {route template}`, so trace UIs can group them."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.observability.conftest import TokenFactory


def _server_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]


async def test_a_job_request_is_named_by_its_route_with_the_id_left_out(
    client: AsyncTestClient[Litestar], make_auth: TokenFactory, spans: InMemorySpanExporter
) -> None:
    auth = await make_auth("alice")
    job_ids = [str(uuid.uuid4()) for _ in range(2)]
    spans.clear()

    for job_id in job_ids:
        await client.get(f"/api/v1/downloads/jobs/{job_id}", headers=auth)

    server = _server_spans(spans)
    assert [s.name for s in server] == ["GET /api/v1/downloads/jobs/{job_id}"] * 2
    assert all(s.attributes is not None for s in server)
    assert [s.attributes[HTTP_ROUTE] for s in server if s.attributes] == [
        "/api/v1/downloads/jobs/{job_id}"
    ] * 2
    # The id stays findable: it is in the span's target, just not in its name.
    assert any(job_ids[0] in str(value) for value in (server[0].attributes or {}).values())


async def test_an_unknown_path_is_named_by_its_method_alone(
    client: AsyncTestClient[Litestar], spans: InMemorySpanExporter
) -> None:
    spans.clear()
    random_path = f"/api/v1/no-such-route/{uuid.uuid4()}"

    response = await client.get(random_path)

    assert response.status_code == 404
    [server] = _server_spans(spans)
    assert server.name == "GET"
    assert HTTP_ROUTE not in (server.attributes or {})
