"""Retention of user-defined tasks on real PostgreSQL: ended tasks older than
DOWNLINK_RETENTION_DAYS go (with their history), in bounded batches; open and recent ones stay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from services.gateway.tasks.retention import purge_ended_tasks
from tests.gateway.test_tasks_api import redis, registered_tasks

if TYPE_CHECKING:
    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.settings import Settings

    Client = AsyncTestClient[Litestar]

__all__ = ["redis", "registered_tasks"]

pytestmark = pytest.mark.usefixtures("registered_tasks")


async def _task(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool, status: str, age_days: float
) -> str:
    """A task in `status` that was last moved `age_days` ago, with one history row."""
    response = await client.post(
        "/api/v1/tasks", json={"task": "add", "args": {"a": 1}}, headers=auth
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    ended = status in {"completed", "failed", "cancelled", "dead"}
    await pool.execute(
        "UPDATE tasks SET status = $2, created_at = now() - make_interval(days => $3 + 1),"
        " updated_at = now() - make_interval(days => $3),"
        " finished_at = CASE WHEN $4 THEN now() - make_interval(days => $3) END WHERE id = $1",
        task_id,
        status,
        age_days,
        ended,
    )
    await pool.execute(
        "INSERT INTO executions (task, subject_id, user_id, status, attempt, started_at)"
        " SELECT 'task', id::text, user_id, 'completed', 1, created_at FROM tasks WHERE id = $1",
        task_id,
    )
    return task_id


async def _shown(client: Client, auth: dict[str, str], task_id: str) -> int:
    return (await client.get(f"/api/v1/tasks/{task_id}", headers=auth)).status_code


async def test_ended_tasks_past_retention_go_with_their_history_in_bounded_batches(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool, settings: Settings
) -> None:
    old: dict[str, Any] = {
        status: await _task(client, auth, pool, status, settings.retention_days + 1)
        for status in ("completed", "failed", "cancelled", "dead")
    }
    kept = [
        await _task(client, auth, pool, "completed", settings.retention_days - 1),
        await _task(client, auth, pool, "pending", settings.retention_days + 30),
        await _task(client, auth, pool, "running", settings.retention_days + 30),
    ]
    retention_s = float(settings.retention_s)
    # A full batch says more may remain; the relay calls again until one is not full.
    assert await purge_ended_tasks(pool, older_than_s=retention_s, limit=3) is True
    assert await purge_ended_tasks(pool, older_than_s=retention_s, limit=3) is False
    assert await purge_ended_tasks(pool, older_than_s=retention_s, limit=3) is False
    for task_id in old.values():
        assert await _shown(client, auth, task_id) == 404
    for task_id in kept:
        assert await _shown(client, auth, task_id) == 200
    history = await pool.fetch("SELECT subject_id FROM executions WHERE task = 'task'")
    assert sorted(row["subject_id"] for row in history) == sorted(kept)
    listed = (await client.get("/api/v1/tasks", headers=auth)).json()
    assert listed["total"] == len(kept)
