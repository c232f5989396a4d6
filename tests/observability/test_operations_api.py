"""The operator routes on the real gateway app: /metrics, workers, queues, executions, SSE."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from services.gateway.errors import InvalidRequest
from services.gateway.executions import history
from services.gateway.jobs.live import job_event_stream, parse_last_event_id
from shared.streams import DEAD_STREAM, GROUPS
from tests.gateway.support import downloaded, progress, started, submit_job, user_id
from tests.observability.test_history import job_finished

if TYPE_CHECKING:
    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.events import PipelineEvent
    from shared.settings import Settings
    from tests.observability.conftest import TokenFactory

API = "/api/v1"


def _value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


async def _record(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await history.record(connection, event)


async def _wait_for_workers(client: AsyncTestClient[Litestar], auth: dict[str, str]) -> Any:
    deadline = time.monotonic() + 5
    while not (body := (await client.get(f"{API}/workers", headers=auth)).json())["workers"]:
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    return body


async def test_metrics_need_no_token_and_show_jobs_and_streams(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    job_id, files = await submit_job(pool, await user_id(pool, "alice"), files=3)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _value(text, "downlink_jobs", status="pending") == 1
    assert _value(text, "downlink_jobs", status="completed") == 0
    assert _value(text, "downlink_files", status="pending") == 3
    assert _value(text, "downlink_stored_bytes") == 0
    for group, streams in GROUPS.items():
        for stream in streams:
            assert _value(text, "downlink_stream_pending", stream=stream, group=group) is not None
    assert _value(text, "downlink_dead_letters") == 0
    assert job_id
    assert files


async def test_workers_are_for_admins_and_list_the_gateway_itself(
    client: AsyncTestClient[Litestar], make_auth: TokenFactory
) -> None:
    assert (await client.get(f"{API}/workers")).status_code == 401
    assert (await client.get(f"{API}/workers", headers=await make_auth("alice"))).status_code == 403
    body = await _wait_for_workers(client, await make_auth("root", admin=True))
    [gateway] = body["workers"]
    assert gateway["service"] == "gateway"
    assert gateway["consumer"].endswith(f"-{gateway['pid']}")
    assert {"host", "started_at", "last_heartbeat", "in_flight", "processed", "failed"} <= set(
        gateway
    )


async def test_queues_are_for_admins_and_cover_every_group(
    client: AsyncTestClient[Litestar], make_auth: TokenFactory, settings: Settings
) -> None:
    assert (await client.get(f"{API}/queues", headers=await make_auth("alice"))).status_code == 403
    async with Redis.from_url(settings.redis_url) as redis:
        await redis.xadd(DEAD_STREAM, {"letter": "{}"})
    response = await client.get(f"{API}/queues", headers=await make_auth("root", admin=True))
    assert response.status_code == 200
    body = response.json()
    pairs = {(row["stream"], row["group"]) for row in body["queues"]}
    assert {(s, g) for g, streams in GROUPS.items() for s in streams} <= pairs
    assert body["dead_letters"] == 1
    assert body["delayed_retries"] == 0
    for row in body["queues"]:
        assert {"length", "pending", "lag", "consumers", "oldest_pending_s"} <= set(row)


async def test_executions_are_filtered_and_scoped_to_their_owner(
    client: AsyncTestClient[Litestar], make_auth: TokenFactory, pool: asyncpg.Pool
) -> None:
    alice = await make_auth("alice")
    job_id, (file_id, _) = await submit_job(pool, await user_id(pool, "alice"), files=2)
    await _record(pool, started(job_id, file_id), downloaded(job_id, file_id))

    response = await client.get(f"{API}/executions", params={"job_id": job_id}, headers=alice)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 1
    [run] = body["executions"]
    assert (run["task"], run["status"], run["file_id"], run["attempt"]) == (
        "download",
        "completed",
        file_id,
        1,
    )
    bob = await make_auth("bob")
    assert (await client.get(f"{API}/executions", headers=bob)).json()["total"] == 0
    root = await make_auth("root", admin=True)
    assert (await client.get(f"{API}/executions", headers=root)).json()["total"] == 1
    bad = await client.get(f"{API}/executions", params={"status": "exploded"}, headers=alice)
    assert bad.status_code == 400
    assert bad.json()["detail"].startswith("status:")
    assert (
        await client.get(f"{API}/executions", params={"per_page": 0}, headers=alice)
    ).status_code == 400


def _parse_sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append(fields)
    return events


async def test_the_event_stream_of_an_ended_job_replays_and_resumes(
    client: AsyncTestClient[Litestar], make_auth: TokenFactory, pool: asyncpg.Pool
) -> None:
    alice = await make_auth("alice")
    job_id, (first, second) = await submit_job(pool, await user_id(pool, "alice"), files=2)
    await _record(
        pool,
        started(job_id, first),
        progress(job_id, first, 5, 10),
        downloaded(job_id, first),
        started(job_id, second),
        downloaded(job_id, second),
        job_finished(job_id, "completed"),
    )
    path = f"{API}/downloads/jobs/{job_id}/events"
    assert (await client.get(path, headers=await make_auth("bob"))).status_code == 404

    response = await client.get(path, headers=alice)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _parse_sse(response.text)
    assert [e["event"] for e in events] == [
        "file.started",
        "file.progress",
        "file.downloaded",
        "file.started",
        "file.downloaded",
        "job.finished",
    ]
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)
    assert msgspec.json.decode(events[1]["data"])["bytes_downloaded"] == 5

    resumed = _parse_sse(
        (await client.get(path, headers={**alice, "Last-Event-ID": events[2]["id"]})).text
    )
    assert [e["id"] for e in resumed] == [e["id"] for e in events[3:]]
    by_query = _parse_sse((await client.get(path, params={"after": ids[4]}, headers=alice)).text)
    assert [e["event"] for e in by_query] == ["job.finished"]


async def test_the_stream_follows_a_running_job_live(pool: asyncpg.Pool) -> None:
    job_id, [first] = await submit_job(pool, await user_id(pool, "alice"), files=1)
    received: list[Any] = []

    async def follow() -> None:
        async for message in job_event_stream(pool, job_id, poll_interval_s=0.02, heartbeat_s=0.1):
            received.append(message)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # quiet: only the opening comment and heartbeats so far
    assert any(m.comment == "keep-alive" for m in received)
    assert all(m.event is None for m in received)
    await _record(pool, started(job_id, first), downloaded(job_id, first))
    await _record(pool, job_finished(job_id, "completed"))
    await asyncio.wait_for(follower, 5)
    kinds = [m.event for m in received if m.event]
    assert kinds == ["file.started", "file.downloaded", "job.finished"]
    assert received[0].retry  # tells EventSource how soon to reconnect


async def test_a_stream_of_a_job_that_ended_without_a_log_ends(pool: asyncpg.Pool) -> None:
    job_id, _ = await submit_job(pool, await user_id(pool, "alice"), files=1)
    await pool.execute(
        "UPDATE jobs SET status = 'failed', finished_at = now() - interval '1 minute'"
        " WHERE id = $1",
        job_id,
    )
    messages = [m async for m in job_event_stream(pool, job_id, poll_interval_s=0.01)]
    assert [m.event for m in messages if m.event] == []


@pytest.mark.parametrize(("header", "expected"), [(None, None), ("", None), ("17", 17), (" 3 ", 3)])
def test_last_event_id_is_a_number_or_absent(header: str | None, expected: int | None) -> None:
    assert parse_last_event_id(header) == expected


@pytest.mark.parametrize("header", ["abc", "-1", str(2**63)])
def test_a_last_event_id_that_is_no_event_id_is_refused(header: str) -> None:
    with pytest.raises(InvalidRequest, match="Last-Event-ID"):
        parse_last_event_id(header)


async def test_the_openapi_document_describes_the_new_routes(
    client: AsyncTestClient[Litestar],
) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/v1/workers",
        "/api/v1/queues",
        "/api/v1/executions",
        "/api/v1/downloads/jobs/{job_id}/events",
    ):
        assert path in paths, sorted(paths)
    assert "/metrics" not in paths  # for scrapers, not API clients


async def test_a_shutdown_ends_open_streams(pool: asyncpg.Pool) -> None:
    job_id, _ = await submit_job(pool, await user_id(pool, "alice"), files=1)
    stopping = asyncio.Event()

    async def follow() -> list[Any]:
        return [m async for m in job_event_stream(pool, job_id, stopping=stopping)]

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    assert not follower.done()
    stopping.set()
    messages = await asyncio.wait_for(follower, 2)
    assert [m.event for m in messages if m.event] == []
