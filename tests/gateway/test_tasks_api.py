"""/api/v1/tasks and /api/v1/task-types on a real gateway (Redis, PostgreSQL), the task
events' projection, and the reconciler's release of delayed and lost task commands."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from redis.asyncio import Redis

from services.gateway.reconciler import Reconciler
from services.gateway.tracker import project
from services.tasks.registry import load_tasks, registered
from shared.events import (
    TASK_DECODER,
    TaskFailed,
    TaskProgress,
    TaskRetrying,
    TaskStarted,
    TaskSucceeded,
)
from shared.ids import EventId, TaskId, new_event_id
from shared.streams import Lane, live_key, task_cancelled_key, task_stream, task_types_key
from tests.gateway.support import eventually, stream_frames

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.events import TaskEvent
    from shared.settings import Settings
    from tests.gateway.conftest import TokenFactory

    Client = AsyncTestClient[Litestar]

TASKS = "/api/v1/tasks"
NORMAL_LANE = task_stream("default", Lane.NORMAL)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def registered_tasks(redis: Redis) -> None:
    """The sample tasks, registered as a live worker registers them."""
    tasks = load_tasks(["tests.tasks.sample_tasks"], queue="default")
    await redis.hset(task_types_key("test-worker"), mapping=registered(tasks, "test-worker"))  # type: ignore[arg-type]


async def _count(pool: asyncpg.Pool, table: str) -> int:
    value: int = await pool.fetchval(f"SELECT count(*) FROM {table}")
    return value


async def _enqueue(client: Client, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post(TASKS, json=body, headers=auth)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


# --- enqueue ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("registered_tasks")
async def test_an_enqueued_task_is_recorded_and_its_command_published(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool, redis: Redis
) -> None:
    answer = await _enqueue(client, auth, task="add", args={"a": 2, "b": 3})
    assert answer["status"] == "pending"
    assert answer["queue_position"] == 1
    row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", answer["task_id"])
    assert (row["task"], row["queue"], row["args"], row["priority"]) == (
        "add",
        "default",
        {"a": 2, "b": 3},
        5,
    )
    assert row["trace_id"] is not None

    async def published() -> bool:
        return bool(await stream_frames(redis, NORMAL_LANE))

    await eventually(published, what="the RunTask on its lane")
    body, headers = (await stream_frames(redis, NORMAL_LANE))[0]
    command = TASK_DECODER.decode(body)
    assert (command.task_id, command.task, command.args) == (
        answer["task_id"],
        "add",
        {"a": 2, "b": 3},
    )
    assert "traceparent" in headers
    assert await redis.exists(live_key(f"task:{answer['task_id']}"))
    second = await _enqueue(client, auth, task="add", args={"a": 1})
    assert second["queue_position"] >= 1


@pytest.mark.usefixtures("registered_tasks")
async def test_an_unknown_task_answers_404_and_writes_nothing(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    response = await client.post(TASKS, json={"task": "nope", "args": {}}, headers=auth)
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]
    assert await _count(pool, "tasks") == 0
    assert await _count(pool, "outbox") == 0


@pytest.mark.usefixtures("registered_tasks")
@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"a": "two"}, "args.a:"),
        ({}, "args.a: missing required argument"),
        ({"a": 1, "c": 2}, "args.c: unexpected argument"),
        ({"a": 1, "b": 1.5}, "args.b:"),
    ],
)
async def test_arguments_that_do_not_match_answer_422_naming_the_argument(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool, args: dict[str, Any], named: str
) -> None:
    response = await client.post(TASKS, json={"task": "add", "args": args}, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(named)
    assert await _count(pool, "tasks") == 0
    assert await _count(pool, "outbox") == 0


@pytest.mark.usefixtures("registered_tasks")
async def test_arguments_over_a_mebibyte_answer_413_and_write_nothing(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    body = {"task": "count_up", "args": {"steps": 1, "pause_s": 0.0, "junk": "x" * (1 << 20)}}
    response = await client.post(TASKS, json=body, headers=auth)
    assert response.status_code == 413, response.text
    assert await _count(pool, "tasks") == 0


@pytest.mark.usefixtures("registered_tasks")
async def test_a_repeated_idempotency_key_returns_the_first_task(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    headers = {**auth, "Idempotency-Key": "thumb-7"}
    first = await client.post(TASKS, json={"task": "add", "args": {"a": 1}}, headers=headers)
    again = await client.post(TASKS, json={"task": "add", "args": {"a": 1}}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    assert "exists already" in again.json()["message"]
    assert await _count(pool, "tasks") == 1
    assert await _count(pool, "outbox") == 1


@pytest.mark.usefixtures("registered_tasks")
async def test_a_unique_task_is_not_queued_twice_while_open(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    first = await _enqueue(client, auth, task="unique_add", args={"a": 1})
    again = await _enqueue(client, auth, task="unique_add", args={"a": 1})
    other = await _enqueue(client, auth, task="unique_add", args={"a": 2})
    assert again["task_id"] == first["task_id"]
    assert other["task_id"] != first["task_id"]
    await pool.execute("UPDATE tasks SET status = 'completed' WHERE id = $1", first["task_id"])
    assert (await _enqueue(client, auth, task="unique_add", args={"a": 1}))["task_id"] not in {
        first["task_id"],
        other["task_id"],
    }


@pytest.mark.usefixtures("registered_tasks")
async def test_users_see_only_their_own_tasks(
    client: Client, auth: dict[str, str], make_auth: TokenFactory
) -> None:
    mine = await _enqueue(client, auth, task="add", args={"a": 1})
    await _enqueue(client, auth, task="sync_add", args={"a": 1, "b": 2})
    bob = await make_auth("bob")
    assert (await client.get(f"{TASKS}/{mine['task_id']}", headers=bob)).status_code == 404
    cancel = await client.post(f"{TASKS}/{mine['task_id']}/cancel", headers=bob)
    assert cancel.status_code == 404
    assert (await client.get(TASKS, headers=bob)).json()["total"] == 0
    listed = (await client.get(TASKS, params={"task": "add"}, headers=auth)).json()
    assert [t["task_id"] for t in listed["tasks"]] == [mine["task_id"]]
    status = (await client.get(f"{TASKS}/{mine['task_id']}", headers=auth)).json()
    assert (status["status"], status["args"], status["attempts"]) == ("pending", {"a": 1}, 0)
    pending = (await client.get(TASKS, params={"status": "pending"}, headers=auth)).json()
    assert pending["total"] == 2
    bad = await client.get(TASKS, params={"status": "sleeping"}, headers=auth)
    assert bad.status_code == 400


@pytest.mark.usefixtures("registered_tasks")
async def test_cancel_ends_an_open_task_once(
    client: Client, auth: dict[str, str], redis: Redis
) -> None:
    task = await _enqueue(client, auth, task="add", args={"a": 1})
    answer = await client.post(f"{TASKS}/{task['task_id']}/cancel", headers=auth)
    assert answer.status_code == 200
    assert answer.json() == {"task_id": task["task_id"], "status": "cancelled"}
    assert await redis.exists(task_cancelled_key(task["task_id"]))
    again = await client.post(f"{TASKS}/{task['task_id']}/cancel", headers=auth)
    assert again.status_code == 409


@pytest.mark.usefixtures("registered_tasks")
async def test_task_types_show_what_live_workers_registered(
    client: Client, auth: dict[str, str]
) -> None:
    types = (await client.get("/api/v1/task-types", headers=auth)).json()["task_types"]
    by_name = {t["name"]: t for t in types}
    assert {"add", "flaky", "append_once"} <= set(by_name)
    flaky = by_name["flaky"]
    assert flaky["queue"] == "default"
    assert flaky["policy"]["max_tries"] == 3
    assert flaky["policy"]["backoff"] == "linear"
    schema = msgspec.json.encode(by_name["add"]["args_schema"]).decode()
    assert '"required":["a"]' in schema
    assert "ctx" not in msgspec.json.encode(by_name["count_up"]["args_schema"]).decode()


async def test_task_types_are_empty_without_workers(client: Client, auth: dict[str, str]) -> None:
    assert (await client.get("/api/v1/task-types", headers=auth)).json() == {"task_types": []}


# --- delayed tasks and the reconciler -------------------------------------------------------


@pytest.mark.usefixtures("registered_tasks")
async def test_a_delayed_task_is_released_by_the_reconciler_once_due(
    client: Client,
    auth: dict[str, str],
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
) -> None:
    task = await _enqueue(client, auth, task="add", args={"a": 1}, defer_s=1.0)
    reconciler = Reconciler(pool, redis, settings)
    await reconciler.reconcile_once()
    assert await _count(pool, "outbox") == 0, "published before it was due"
    await asyncio.sleep(1.1)
    report = await reconciler.reconcile_once()
    assert report.lost["task"] == 1

    async def published() -> bool:
        return bool(await stream_frames(redis, NORMAL_LANE))

    await eventually(published, what="the delayed RunTask on its lane")
    assert (
        TASK_DECODER.decode((await stream_frames(redis, NORMAL_LANE))[0][0]).task_id
        == task["task_id"]
    )
    assert (await reconciler.reconcile_once()).lost["task"] == 0


@pytest.mark.usefixtures("registered_tasks")
async def test_a_task_command_redis_lost_is_published_again(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool, redis: Redis, settings: Settings
) -> None:
    task = await _enqueue(client, auth, task="add", args={"a": 1})

    async def sent() -> bool:
        return await redis.exists(live_key(f"task:{task['task_id']}")) == 1

    await eventually(sent, what="the first publish")
    await redis.flushdb()
    assert (await Reconciler(pool, redis, settings).reconcile_once()).lost["task"] == 1


# --- the projection of task events ------------------------------------------------------------


async def _task_row(client: Client, auth: dict[str, str]) -> TaskId:
    return TaskId((await _enqueue(client, auth, task="flaky", args={"fail_times": 1}))["task_id"])


async def _apply(pool: asyncpg.Pool, *events: TaskEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)  # type: ignore[arg-type]


def _at() -> dict[str, Any]:
    return {"event_id": EventId(new_event_id()), "at": time.time()}


@pytest.mark.usefixtures("registered_tasks")
async def test_task_events_move_the_row_and_write_one_history_row_per_try(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    task_id = await _task_row(client, auth)
    started = TaskStarted(task_id=task_id, attempt=1, worker="w1", **_at())
    await _apply(
        pool, started, TaskProgress(task_id=task_id, done=1, total=4, message="a", **_at())
    )
    row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    assert (row["status"], row["attempts"], row["worker"]) == ("running", 1, "w1")
    assert row["progress"]["done"] == 1
    retrying = TaskRetrying(task_id=task_id, attempt=1, error="RuntimeError: boom", **_at())
    await _apply(pool, retrying, started)  # a replayed start changes nothing
    assert (await pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)) == "pending"
    await _apply(
        pool,
        TaskStarted(task_id=task_id, attempt=2, worker="w2", **_at()),
        TaskSucceeded(task_id=task_id, attempt=2, worker="w2", result={"ok": [1]}, **_at()),
    )
    status = (await client.get(f"{TASKS}/{task_id}", headers=auth)).json()
    assert (status["status"], status["attempts"], status["result"]) == ("completed", 2, {"ok": [1]})
    assert status["progress"] == {"done": 1.0, "total": 4.0, "message": "a"}
    tries = await pool.fetch(
        "SELECT attempt, status, worker, error FROM executions"
        " WHERE task = 'task' AND subject_id = $1 ORDER BY attempt",
        task_id,
    )
    assert [(t["attempt"], t["status"], t["worker"]) for t in tries] == [
        (1, "retried", "w1"),
        (2, "completed", "w2"),
    ]
    late = TaskFailed(task_id=task_id, error="late", attempts=3, **_at())
    await _apply(pool, late)
    assert (await pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)) == "completed"


@pytest.mark.usefixtures("registered_tasks")
async def test_a_try_overtaken_by_the_next_is_interrupted_and_a_dead_task_keeps_its_error(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    task_id = await _task_row(client, auth)
    await _apply(
        pool,
        TaskStarted(task_id=task_id, attempt=1, worker="killed", **_at()),
        TaskStarted(task_id=task_id, attempt=2, worker="w2", **_at()),
        TaskFailed(task_id=task_id, error="Permanent: no\n\nTraceback ...", attempts=2, **_at()),
    )
    row = await pool.fetchrow("SELECT status, error FROM tasks WHERE id = $1", task_id)
    assert row["status"] == "dead"
    assert "Traceback" in row["error"]
    tries = await pool.fetch(
        "SELECT attempt, status FROM executions WHERE subject_id = $1 ORDER BY attempt", task_id
    )
    assert [(t["attempt"], t["status"]) for t in tries] == [(1, "interrupted"), (2, "failed")]


@pytest.mark.usefixtures("registered_tasks")
async def test_a_try_overtaken_by_one_whose_end_arrives_before_its_start_is_interrupted(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    # The tracker runs two batches at once: the next try's end can commit before its start.
    task_id = await _task_row(client, auth)
    await _apply(pool, TaskStarted(task_id=task_id, attempt=1, worker="killed", **_at()))
    await _apply(
        pool,
        TaskSucceeded(task_id=task_id, attempt=2, worker="w2", result=None, **_at()),
        TaskStarted(task_id=task_id, attempt=2, worker="w2", **_at()),
    )
    tries = await pool.fetch(
        "SELECT attempt, status FROM executions WHERE subject_id = $1 ORDER BY attempt", task_id
    )
    assert [(t["attempt"], t["status"]) for t in tries] == [(1, "interrupted"), (2, "completed")]


@pytest.mark.usefixtures("registered_tasks")
async def test_events_after_a_cancel_change_nothing(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    task_id = await _task_row(client, auth)
    assert (await client.post(f"{TASKS}/{task_id}/cancel", headers=auth)).status_code == 200
    await _apply(
        pool,
        TaskStarted(task_id=task_id, attempt=1, **_at()),
        TaskSucceeded(task_id=task_id, result=1, **_at()),
    )
    assert (await pool.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)) == "cancelled"
