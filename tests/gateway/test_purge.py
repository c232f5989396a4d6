"""POST /api/v1/queues/{queue}/purge on a real gateway: the pending tasks of that queue are
cancelled (and announced to workers as cancelled), nothing else; admins only."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from services.gateway.tasks.enqueueing import enqueue
from services.gateway.tasks.records import NewTask
from services.tasks.registry import load_tasks, registered
from shared.streams import TASK_CANCEL_CHANNEL, task_cancelled_key, task_types_key
from tests.gateway.support import user_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from tests.gateway.conftest import TokenFactory

    Client = AsyncTestClient[Litestar]


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
async def registered_tasks(redis: Redis) -> None:
    tasks = load_tasks(["tests.tasks.sample_tasks"], queue="default")
    await redis.hset(task_types_key("test-worker"), mapping=registered(tasks, "test-worker"))  # type: ignore[arg-type]


async def _enqueue(client: Client, auth: dict[str, str], **body: Any) -> str:
    response = await client.post("/api/v1/tasks", json=body, headers=auth)
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


async def _in_another_queue(pool: asyncpg.Pool, queue: str) -> str:
    async with pool.acquire() as connection, connection.transaction():
        enqueued = await enqueue(
            connection,
            NewTask(
                user_id=await user_id(pool, "carol"),
                task="add",
                queue=queue,
                args={"a": 1},
                priority=5,
            ),
            trace_id=None,
            trace_headers={},
        )
    return enqueued.task_id


async def _statuses(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch("SELECT id, status FROM tasks")
    return {str(row["id"]): row["status"] for row in rows}


async def test_purge_cancels_exactly_the_pending_tasks_of_the_queue(
    client: Client, make_auth: TokenFactory, pool: asyncpg.Pool, redis: Redis
) -> None:
    alice, admin = await make_auth("alice"), await make_auth("root", admin=True)
    pending = [await _enqueue(client, alice, task="add", args={"a": n}) for n in range(3)]
    delayed = await _enqueue(client, alice, task="add", args={"a": 9}, defer_s=3600)
    running = await _enqueue(client, alice, task="add", args={"a": 10})
    # As the projection of its TaskStarted leaves it.
    await pool.execute(
        "UPDATE tasks SET status = 'running', started_at = now() WHERE id = $1", running
    )
    elsewhere = await _in_another_queue(pool, "io")
    heard: list[str] = []
    async with _listening(redis, heard):
        response = await client.post("/api/v1/queues/default/purge", headers=admin)
        assert response.status_code == 200, response.text
        assert response.json() == {"queue": "default", "purged": 4}
        await _until(lambda: len(heard) == 4)

    statuses = await _statuses(pool)
    assert {statuses[t] for t in [*pending, delayed]} == {"cancelled"}
    assert (statuses[running], statuses[elsewhere]) == ("running", "pending")
    assert sorted(heard) == sorted([*pending, delayed])
    for task_id in [*pending, delayed]:
        assert await redis.exists(task_cancelled_key(task_id))
    assert not await redis.exists(task_cancelled_key(running))
    shown = (await client.get(f"/api/v1/tasks/{delayed}", headers=alice)).json()
    assert (shown["status"], shown["finished_at"] is not None) == ("cancelled", True)
    again = await client.post("/api/v1/queues/default/purge", headers=admin)
    assert again.json()["purged"] == 0


async def test_only_admins_may_purge(
    client: Client, make_auth: TokenFactory, pool: asyncpg.Pool
) -> None:
    alice = await make_auth("alice")
    task_id = await _enqueue(client, alice, task="add", args={"a": 1})
    response = await client.post("/api/v1/queues/default/purge", headers=alice)
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    assert (await client.post("/api/v1/queues/default/purge")).status_code == 401
    assert (await _statuses(pool))[task_id] == "pending"


async def test_an_unknown_queue_purges_nothing_and_a_malformed_name_is_refused(
    client: Client, make_auth: TokenFactory, pool: asyncpg.Pool
) -> None:
    admin = await make_auth("root", admin=True)
    task_id = await _enqueue(client, admin, task="add", args={"a": 1})
    unknown = await client.post("/api/v1/queues/nothing-here/purge", headers=admin)
    assert (unknown.status_code, unknown.json()) == (200, {"queue": "nothing-here", "purged": 0})
    malformed = await client.post("/api/v1/queues/a%20b/purge", headers=admin)
    assert malformed.status_code == 400
    assert malformed.json()["detail"].startswith("queue:")
    assert (await _statuses(pool))[task_id] == "pending"


@contextlib.asynccontextmanager
async def _listening(redis: Redis, heard: list[str]) -> AsyncIterator[None]:
    """Collect the task ids published on the cancel channel while the block runs."""
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(TASK_CANCEL_CHANNEL)

        async def listen() -> None:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    heard.append(message["data"].decode())

        listener = asyncio.create_task(listen())
        try:
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


async def _until(check: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)
