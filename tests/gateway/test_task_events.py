"""GET /api/v1/tasks/{id}/events on a real gateway (Redis, PostgreSQL): a task's tries, progress
and status as Server-Sent Events until it ends, and a resumed stream's current state."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from services.gateway.tasks.live import task_event_stream
from shared.events import TaskProgress, TaskRetrying, TaskStarted, TaskSucceeded
from shared.ids import TaskId, UserId
from tests.gateway.test_tasks_api import _apply, _at, redis, registered_tasks
from tests.integration.test_observability import _read_events

if TYPE_CHECKING:
    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from tests.gateway.conftest import TokenFactory

    Client = AsyncTestClient[Litestar]

__all__ = ["redis", "registered_tasks"]

pytestmark = pytest.mark.usefixtures("registered_tasks")


async def _task(client: Client, auth: dict[str, str]) -> TaskId:
    body = {"task": "flaky", "args": {"fail_times": 1}}
    response = await client.post("/api/v1/tasks", json=body, headers=auth)
    assert response.status_code == 202, response.text
    return TaskId(response.json()["task_id"])


async def _events(
    client: Client, auth: dict[str, str], task_id: str, **headers: str
) -> list[dict[str, Any]]:
    response = await client.get(
        f"/api/v1/tasks/{task_id}/events", headers={**auth, **headers}, timeout=20
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return _read_events(httpx.Response(200, content=response.content))


async def test_a_task_streams_its_tries_progress_and_status_until_it_ends(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    task_id = await _task(client, auth)
    owner = UserId(str(await pool.fetchval("SELECT user_id FROM tasks WHERE id = $1", task_id)))

    async def follow() -> list[dict[str, Any]]:
        stream = task_event_stream(pool, owner, task_id, poll_interval_s=0.02)
        return [
            {"id": m.id, "event": m.event, "data": json.loads(str(m.data))}
            async for m in stream
            if m.event
        ]

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    await _apply(pool, TaskStarted(task_id=task_id, attempt=1, worker="w1", **_at()))
    await asyncio.sleep(0.2)
    await _apply(
        pool,
        TaskProgress(task_id=task_id, done=1, total=2, message="half", **_at()),
        TaskRetrying(task_id=task_id, attempt=1, error="RuntimeError: boom", **_at()),
    )
    await asyncio.sleep(0.2)
    await _apply(
        pool,
        TaskStarted(task_id=task_id, attempt=2, worker="w2", **_at()),
        TaskSucceeded(task_id=task_id, attempt=2, worker="w2", result={"ok": 1}, **_at()),
    )
    events = await asyncio.wait_for(follower, 10)
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))
    statuses = [e["data"]["status"] for e in events if e["event"] == "task.status"]
    assert statuses[0] == "pending"
    assert "running" in statuses
    assert statuses[-1] == "completed"
    tries = [
        (e["data"]["attempt"], e["data"]["status"]) for e in events if e["event"] == "task.attempt"
    ]
    assert (1, "running") in tries
    assert (1, "retried") in tries
    assert tries[-1] == (2, "completed")
    progress = [e["data"] for e in events if e["event"] == "task.progress"]
    assert progress == [{"done": 1.0, "total": 2.0, "message": "half"}]
    assert events[-1]["event"] == "task.finished"
    finished = events[-1]["data"]
    assert (finished["task_id"], finished["status"], finished["result"]) == (
        task_id,
        "completed",
        {"ok": 1},
    )
    assert finished["attempts"] == 2


async def test_a_resumed_stream_starts_from_the_current_state_with_later_ids(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    task_id = await _task(client, auth)
    await _apply(
        pool,
        TaskStarted(task_id=task_id, attempt=1, worker="w1", **_at()),
        TaskSucceeded(task_id=task_id, attempt=1, worker="w1", result=3, **_at()),
    )
    first = await _events(client, auth, task_id)
    assert [e["event"] for e in first] == ["task.attempt", "task.status", "task.finished"]
    last = first[-1]["id"]
    resumed = await _events(client, auth, task_id, **{"Last-Event-ID": str(last)})
    assert all(e["id"] > last for e in resumed)
    assert resumed[-1]["event"] == "task.finished"
    assert resumed[-1]["data"]["result"] == 3


async def test_another_users_task_or_a_bad_event_id_is_refused_before_the_stream(
    client: Client, auth: dict[str, str], make_auth: TokenFactory
) -> None:
    task_id = await _task(client, auth)
    bob = await make_auth("bob")
    assert (await client.get(f"/api/v1/tasks/{task_id}/events", headers=bob)).status_code == 404
    bad = await client.get(
        f"/api/v1/tasks/{task_id}/events", headers={**auth, "Last-Event-ID": "soon"}
    )
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["detail"]
