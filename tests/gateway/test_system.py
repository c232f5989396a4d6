"""/health, /ready (and 503 while PostgreSQL is unreachable), /schema, serve()."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
from litestar.testing import AsyncTestClient

from services.gateway.app import create_app, serve
from tests.support.ports import free_port

if TYPE_CHECKING:
    from litestar import Litestar

    from shared.settings import Settings


async def test_health(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_redis_and_postgres_answer(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "postgres": "ok"}}


async def test_not_ready_while_postgres_is_unreachable(settings: Settings) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/downlink"
    app = create_app(settings.replace(database_url=nowhere))

    async with AsyncTestClient(app=app) as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
        api = await client.get(
            "/api/v1/downloads/jobs", headers={"Authorization": "Bearer dl_whatever"}
        )

    assert health.status_code == 200
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["postgres"] != "ok"
    assert "Connect" in body["checks"]["postgres"]
    # The API says what is wrong instead of failing with a bare 500.
    assert api.status_code == 503
    assert "PostgreSQL" in api.json()["detail"]


async def test_openapi_schema(client: AsyncTestClient[Litestar]) -> None:
    page = await client.get("/schema")
    document = await client.get("/schema/openapi.json")

    assert page.status_code == 200
    assert document.status_code == 200
    spec = document.json()
    assert spec["info"]["title"] == "Downlink"
    assert {
        "/api/v1/downloads/download",
        "/api/v1/downloads/jobs",
        "/api/v1/downloads/jobs/{job_id}",
        "/api/v1/downloads/jobs/{job_id}/result",
        "/api/v1/downloads/jobs/{job_id}/cancel",
        "/api/v1/downloads/files/{file_id}",
        "/health",
        "/ready",
    } <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    submit = spec["paths"]["/api/v1/downloads/download"]["post"]
    assert submit["security"] == [{"BearerToken": []}]
    assert "Idempotency-Key" in {p["name"] for p in submit["parameters"]}
    response_schema = spec["components"]["schemas"]["SubmitResponse"]
    assert "null" in response_schema["properties"]["estimated_time"]["description"]


async def test_serve_runs_uvicorn_on_the_configured_port(settings: Settings) -> None:
    port = free_port()
    server = asyncio.create_task(serve(settings.replace(http_host="127.0.0.1", http_port=port)))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(100):
                try:
                    response = await http.get("/health")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway did not start listening")
            ready = await http.get("/ready")
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)

    assert response.json() == {"status": "ok"}
    assert ready.status_code == 200
