"""/api/v1/schedules on a real gateway (Redis, PostgreSQL), its own scheduler firing the runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from services.gateway.app import create_app
from services.tasks.registry import load_tasks, registered
from shared.streams import task_types_key
from tests.gateway.support import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar import Litestar
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from shared.settings import Settings
    from tests.gateway.conftest import TokenFactory

    Client = AsyncTestClient[Litestar]

SCHEDULES = "/api/v1/schedules"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
async def registered_tasks(redis: Redis) -> None:
    """The sample tasks, registered as a live worker registers them."""
    tasks = load_tasks(["tests.tasks.sample_tasks"], queue="default")
    await redis.hset(task_types_key("test-worker"), mapping=registered(tasks, "test-worker"))  # type: ignore[arg-type]


async def _create(client: Client, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post(SCHEDULES, json=body, headers=auth)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _tasks_of(pool: asyncpg.Pool, task: str = "add") -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT id, args, status, idempotency_key FROM tasks WHERE task = $1 ORDER BY created_at",
        task,
    )
    return rows


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_a_one_second_interval_schedule_fires_runs_that_appear_as_tasks(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool, spans: InMemorySpanExporter
) -> None:
    before = datetime.now(UTC)
    made = await _create(client, auth, task="add", args={"a": 2, "b": 3}, every_s=1, name="sums")
    assert (made["task"], made["queue"], made["priority"], made["every_s"]) == (
        "add",
        "default",
        5,
        1.0,
    )
    assert (made["name"], made["missed"], made["paused"], made["cron"]) == (
        "sums",
        "skip",
        False,
        None,
    )
    assert timedelta(0) < _at(made["next_run_at"]) - before <= timedelta(seconds=1.5)

    async def two_runs() -> bool:
        return len(await _tasks_of(pool)) >= 2

    await eventually(two_runs, timeout_s=6, what="two runs of the schedule")
    listed = (await client.get("/api/v1/tasks?task=add", headers=auth)).json()["tasks"]
    assert len(listed) >= 2
    assert all(t["args"] == {"a": 2, "b": 3} and t["status"] == "pending" for t in listed)
    shown = (await client.get(f"{SCHEDULES}/{made['schedule_id']}", headers=auth)).json()
    assert shown["last_task_id"] in {t["task_id"] for t in listed}
    assert _at(shown["next_run_at"]) > _at(shown["last_run_at"])
    fired = [s for s in spans.get_finished_spans() if s.name == "schedule fire"]
    assert fired
    assert fired[0].attributes is not None
    assert fired[0].attributes["downlink.schedule_id"] == made["schedule_id"]


async def test_a_cron_schedule_runs_next_on_its_expression_in_its_timezone(
    client: Client, auth: dict[str, str]
) -> None:
    before = datetime.now(UTC)
    every_minute = await _create(client, auth, task="add", args={"a": 1}, cron="* * * * *")
    after = datetime.now(UTC)
    # The next whole minute (of either moment, should the request straddle one).
    assert _at(every_minute["next_run_at"]) in {
        moment.replace(second=0, microsecond=0) + timedelta(minutes=1) for moment in (before, after)
    }
    assert every_minute["timezone"] == "UTC"
    # Kolkata is UTC+05:30 all year: 09:00 there is 03:30 UTC.
    morning = await _create(
        client, auth, task="add", args={"a": 1}, cron="0 9 * * *", timezone="Asia/Kolkata"
    )
    at = _at(morning["next_run_at"]).astimezone(UTC)
    assert (at.hour, at.minute) == (3, 30)
    assert timedelta(0) < at - datetime.now(UTC) <= timedelta(days=1)


async def test_a_paused_schedule_fires_nothing_and_a_resumed_one_fires_again(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    made = await _create(client, auth, task="add", args={"a": 1}, every_s=1)
    one = f"{SCHEDULES}/{made['schedule_id']}"
    paused = await client.post(f"{one}/pause", headers=auth)
    assert paused.status_code == 200, paused.text
    assert (paused.json()["paused"], paused.json()["next_run_at"]) == (True, None)
    fired_before = len(await _tasks_of(pool))
    await asyncio.sleep(2.5)
    assert len(await _tasks_of(pool)) == fired_before

    resumed = await client.post(f"{one}/resume", headers=auth)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["paused"] is False
    assert _at(resumed.json()["next_run_at"]) > datetime.now(UTC)

    async def fired_again() -> bool:
        return len(await _tasks_of(pool)) > fired_before

    await eventually(fired_again, timeout_s=4, what="a run after the resume")


async def test_a_deleted_schedule_fires_no_more(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    made = await _create(client, auth, task="add", args={"a": 1}, every_s=1)
    one = f"{SCHEDULES}/{made['schedule_id']}"

    async def fired() -> bool:
        return bool(await _tasks_of(pool))

    await eventually(fired, timeout_s=4, what="a first run")
    assert (await client.delete(one, headers=auth)).status_code == 204
    assert (await client.get(one, headers=auth)).status_code == 404
    count = len(await _tasks_of(pool))
    await asyncio.sleep(2.0)
    assert len(await _tasks_of(pool)) == count
    assert (await client.delete(one, headers=auth)).status_code == 404


async def test_run_now_enqueues_one_run_and_leaves_the_cadence_alone(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    made = await _create(client, auth, task="add", args={"a": 4, "b": 5}, every_s=3600)
    one = f"{SCHEDULES}/{made['schedule_id']}"
    ran = await client.post(f"{one}/run", headers=auth)
    assert ran.status_code == 202, ran.text
    task_id = ran.json()["task_id"]
    task = (await client.get(f"/api/v1/tasks/{task_id}", headers=auth)).json()
    assert (task["task"], task["args"], task["status"]) == ("add", {"a": 4, "b": 5}, "pending")
    assert len(await _tasks_of(pool)) == 1
    shown = (await client.get(one, headers=auth)).json()
    assert shown["last_task_id"] == task_id
    assert shown["next_run_at"] == made["next_run_at"]


async def test_users_see_and_change_only_their_own_schedules(
    client: Client, auth: dict[str, str], make_auth: TokenFactory, pool: asyncpg.Pool
) -> None:
    mine = await _create(client, auth, task="add", args={"a": 1}, every_s=3600)
    bob = await make_auth("bob")
    one = f"{SCHEDULES}/{mine['schedule_id']}"
    assert (await client.get(one, headers=bob)).status_code == 404
    for action in ("pause", "resume", "run"):
        assert (await client.post(f"{one}/{action}", headers=bob)).status_code == 404
    assert (await client.delete(one, headers=bob)).status_code == 404
    assert (await client.get(SCHEDULES, headers=bob)).json()["total"] == 0
    listed = (await client.get(SCHEDULES, headers=auth)).json()
    assert [s["schedule_id"] for s in listed["schedules"]] == [mine["schedule_id"]]
    assert await pool.fetchval("SELECT paused FROM schedules") is False
    assert len(await _tasks_of(pool)) == 0


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"cron": "61 * * * *"}, 422, "cron: '61 * * * *': [61 * * * *] is not acceptable"),
        ({"cron": "* * * *"}, 422, "cron: '* * * *' has 4 fields; give 5"),
        ({"cron": "* * * * * *"}, 422, "cron: '* * * * * *' has 6 fields"),
        ({"cron": "0 0 31 2 *"}, 422, "cron: '0 0 31 2 *': failed to find next date"),
        ({"cron": "* * * * *", "every_s": 60}, 422, "cron, every_s: give exactly one"),
        ({}, 422, "cron, every_s: give exactly one"),
        ({"every_s": 0.5}, 422, "every_s: 0.5 is under 1 second"),
        ({"every_s": 1e9}, 422, "every_s: at most"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, 422, "timezone: 'Mars/Olympus'"),
        ({"every_s": 60, "timezone": "Europe/Paris"}, 422, "timezone: only with cron"),
        ({"every_s": 60, "task": "nope"}, 404, "nope"),
        ({"every_s": 60, "args": {"a": "two"}}, 422, "args.a:"),
        ({"every_s": 60, "args": {}}, 422, "args.a: missing required argument"),
        ({"every_s": 60, "missed": "all"}, 400, "missed"),
        ({"every_s": 60, "evry": 1}, 400, "evry"),
        ({"every_s": "often"}, 400, "every_s"),
    ],
)
async def test_bad_input_answers_4xx_naming_the_field_and_writes_nothing(
    client: Client,
    auth: dict[str, str],
    pool: asyncpg.Pool,
    body: dict[str, Any],
    status: int,
    named: str,
) -> None:
    response = await client.post(
        SCHEDULES, json={"task": "add", "args": {"a": 1}} | body, headers=auth
    )
    assert response.status_code == status, response.text
    assert named in response.json()["detail"]
    assert await pool.fetchval("SELECT count(*) FROM schedules") == 0


async def test_the_routes_are_in_the_openapi_document(client: Client) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/schedules"])
    assert {"get", "delete"} <= set(paths["/api/v1/schedules/{schedule_id}"])
    for action in ("pause", "resume", "run"):
        assert "post" in paths[f"/api/v1/schedules/{{schedule_id}}/{action}"]
    assert "422" in paths["/api/v1/schedules"]["post"]["responses"]


async def test_schedules_survive_a_restart_of_the_gateway(
    settings: Settings, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    async with AsyncTestClient(app=create_app(settings)) as first:
        made = await _create(first, auth, task="add", args={"a": 1}, every_s=3600)
    # Due now, with no gateway running: the next one to start fires it.
    await pool.execute("UPDATE schedules SET next_run_at = now()")
    assert len(await _tasks_of(pool)) == 0
    async with AsyncTestClient(app=create_app(settings)) as second:

        async def fired() -> bool:
            return len(await _tasks_of(pool)) == 1

        await eventually(fired, timeout_s=4, what="the run, fired by the new gateway")
        shown = (await second.get(f"{SCHEDULES}/{made['schedule_id']}", headers=auth)).json()
        assert shown["last_task_id"] == str((await _tasks_of(pool))[0]["id"])
