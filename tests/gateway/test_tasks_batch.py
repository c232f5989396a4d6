"""POST /api/v1/tasks/batch on a real gateway (Redis, PostgreSQL): all or nothing, in order,
keys and uniqueness honoured; and the catalogue cache that still finds a worker just registered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from services.tasks.registry import load_tasks, registered
from shared.events import TASK_DECODER
from shared.streams import Lane, task_stream, task_types_key
from tests.gateway.support import eventually, stream_frames

# The tasks API suite's fixtures: a Redis client, the sample tasks registered as a worker does.
from tests.gateway.test_tasks_api import redis, registered_tasks

if TYPE_CHECKING:
    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient
    from redis.asyncio import Redis

    Client = AsyncTestClient[Litestar]

__all__ = ["redis", "registered_tasks"]

BATCH = "/api/v1/tasks/batch"
pytestmark = pytest.mark.usefixtures("registered_tasks")


async def _count(pool: asyncpg.Pool, table: str) -> int:
    value: int = await pool.fetchval(f"SELECT count(*) FROM {table}")
    return value


async def _batch(client: Client, auth: dict[str, str], *tasks: dict[str, Any]) -> Any:
    response = await client.post(BATCH, json={"tasks": list(tasks)}, headers=auth)
    assert response.status_code == 202, response.text
    return response.json()["tasks"]


async def test_a_batch_is_written_and_published_in_the_order_given(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool, redis: Redis
) -> None:
    answers = await _batch(
        client,
        auth,
        {"task": "add", "args": {"a": 1}},
        {"task": "sync_add", "args": {"a": 1, "b": 2}},
        {"task": "add", "args": {"a": 3}, "priority": 9},
        {"task": "add", "args": {"a": 4}},
    )
    assert [a["status"] for a in answers] == ["pending"] * 4
    assert [a["queue_position"] for a in answers] == [1, 2, 1, 3]
    assert all(a["message"] == "task queued" for a in answers)
    rows = {str(r["id"]): r for r in await pool.fetch("SELECT id, task, args, priority FROM tasks")}
    assert [(rows[a["task_id"]]["task"], rows[a["task_id"]]["args"]) for a in answers] == [
        ("add", {"a": 1}),
        ("sync_add", {"a": 1, "b": 2}),
        ("add", {"a": 3}),
        ("add", {"a": 4}),
    ]
    assert rows[answers[2]["task_id"]]["priority"] == 9
    normal = task_stream("default", Lane.NORMAL)

    async def published() -> bool:
        return len(await stream_frames(redis, normal)) == 3

    await eventually(published, what="the batch's RunTasks on the normal lane")
    on_lane = [TASK_DECODER.decode(body).task_id for body, _ in await stream_frames(redis, normal)]
    assert on_lane == [answers[0]["task_id"], answers[1]["task_id"], answers[3]["task_id"]]
    high = await stream_frames(redis, task_stream("default", Lane.HIGH))
    assert [TASK_DECODER.decode(body).task_id for body, _ in high] == [answers[2]["task_id"]]
    # Queued after the batch, behind it in its lane.
    more = await _batch(client, auth, {"task": "add", "args": {"a": 5}})
    assert more[0]["queue_position"] == 4


@pytest.mark.parametrize(
    ("bad", "status", "named"),
    [
        ({"task": "add", "args": {"a": "two"}}, 422, "tasks[1].args.a:"),
        ({"task": "add", "args": {}}, 422, "tasks[1].args.a: missing required argument"),
        ({"task": "add", "args": {"a": 1, "c": 2}}, 422, "tasks[1].args.c: unexpected argument"),
        ({"task": "nope", "args": {}}, 404, "tasks[1].task: no worker has registered"),
        (
            {"task": "count_up", "args": {"steps": 1, "junk": "x" * (1 << 20)}},
            413,
            "tasks[1].args:",
        ),
    ],
)
async def test_one_refused_item_refuses_the_batch_and_is_named(
    client: Client,
    auth: dict[str, str],
    pool: asyncpg.Pool,
    bad: dict[str, Any],
    status: int,
    named: str,
) -> None:
    body = {"tasks": [{"task": "add", "args": {"a": 1}}, bad, {"task": "add", "args": {"a": 2}}]}
    response = await client.post(BATCH, json=body, headers=auth)
    assert response.status_code == status, response.text
    assert response.json()["detail"].startswith(named), response.text
    assert await _count(pool, "tasks") == 0
    assert await _count(pool, "outbox") == 0


@pytest.mark.parametrize(
    ("tasks", "status"),
    [
        ([], 400),
        ([{"task": "add", "args": {"a": 1}}] * 1001, 413),
        ([{"task": "add", "args": {"a": 1}, "priority": 11}], 400),
        ([{"task": "add", "args": {"a": 1}, "colour": "red"}], 400),
    ],
)
async def test_a_malformed_batch_answers_naming_tasks(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool, tasks: list[Any], status: int
) -> None:
    response = await client.post(BATCH, json={"tasks": tasks}, headers=auth)
    assert response.status_code == status, response.text
    assert "tasks" in response.json()["detail"], response.text
    assert await _count(pool, "tasks") == 0


async def test_a_thousand_tasks_fit_in_one_batch(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    answers = await _batch(client, auth, *({"task": "add", "args": {"a": n}} for n in range(1000)))
    assert [a["queue_position"] for a in answers] == list(range(1, 1001))
    assert len({a["task_id"] for a in answers}) == 1000
    assert await _count(pool, "tasks") == await _count(pool, "outbox") == 1000


async def test_idempotency_keys_and_unique_tasks_hold_within_and_across_batches(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    first = await _batch(
        client,
        auth,
        {"task": "add", "args": {"a": 1}, "idempotency_key": "k1"},
        {"task": "add", "args": {"a": 1}, "idempotency_key": "k1"},
        {"task": "unique_add", "args": {"a": 7}},
        {"task": "unique_add", "args": {"a": 7}},
        {"task": "add", "args": {"a": 1}, "defer_s": 60},
    )
    assert first[1]["task_id"] == first[0]["task_id"]
    assert first[3]["task_id"] == first[2]["task_id"]
    assert "exists already" in first[1]["message"]
    assert "exists already" in first[3]["message"]
    assert first[0]["message"] == first[2]["message"] == "task queued"
    assert first[4]["status"] == "pending"
    again = await _batch(
        client,
        auth,
        {"task": "unique_add", "args": {"a": 7}},
        {"task": "add", "args": {"a": 2}, "idempotency_key": "k1"},
        {"task": "add", "args": {"a": 2}, "idempotency_key": "k2"},
    )
    assert again[0]["task_id"] == first[2]["task_id"]
    assert again[1]["task_id"] == first[0]["task_id"]
    assert again[2]["task_id"] not in {a["task_id"] for a in first}
    assert await _count(pool, "tasks") == 4
    # The delayed task waits for the reconciler: no outbox row of its own.
    assert await _count(pool, "outbox") == 3


async def test_a_worker_registered_a_moment_ago_is_found_at_once(
    client: Client, auth: dict[str, str], redis: Redis
) -> None:
    # The gateway's copy of the registry is fresh (an enqueue just read it) ...
    await _batch(client, auth, {"task": "add", "args": {"a": 1}})
    add = msgspec.json.decode(
        registered(load_tasks(["tests.tasks.sample_tasks"], queue="default"), "late")["add"]
    )
    fields = {"resize": msgspec.json.encode({**add, "name": "resize", "queue": "images"})}
    # ... and a new worker registers a task the copy has not seen.
    await redis.hset(task_types_key("late-worker"), mapping=fields)  # type: ignore[arg-type]
    single = await client.post(
        "/api/v1/tasks", json={"task": "resize", "args": {"a": 1}}, headers=auth
    )
    assert single.status_code == 202, single.text
    assert (await _batch(client, auth, {"task": "resize", "args": {"a": 2}}))[0]["status"]
