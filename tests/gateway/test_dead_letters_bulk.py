"""Filtered dead-letter listings, bulk retry and discard, and owners' bulk retries of failed
files and tasks: real gateway, Redis and PostgreSQL; letters written as the runner writes them."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from redis.asyncio import Redis

from services.gateway.tracker import project
from services.tasks.registry import load_tasks, registered
from shared.consumer import DeadLetter
from shared.streams import (
    DEAD_STREAM,
    EVENTS_STREAM,
    Lane,
    cancelled_key,
    download_stream,
    lane_for,
    task_stream,
    task_types_key,
)
from tests.gateway.support import downloaded, failed, started, submit_job, user_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.ids import FileId, JobId
    from tests.gateway.conftest import TokenFactory

    Client = AsyncTestClient[Litestar]

LETTERS = "/api/v1/dead-letters"
RETRY = f"{LETTERS}/retry"
DISCARD = f"{LETTERS}/discard"
LANE = download_stream(lane_for(5))
TASK_LANE = task_stream("default", Lane.NORMAL)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def admin(make_auth: TokenFactory) -> dict[str, str]:
    return await make_auth("root", admin=True)


@pytest.fixture
async def registered_tasks(redis: Redis) -> None:
    """The sample tasks, registered as a live worker registers them."""
    tasks = load_tasks(["tests.tasks.sample_tasks"], queue="default")
    await redis.hset(task_types_key("test-worker"), mapping=registered(tasks, "test-worker"))  # type: ignore[arg-type]


async def _failed_job(pool: asyncpg.Pool, owner: str, files: int) -> tuple[JobId, list[FileId]]:
    """A job of `owner` whose files all failed after their tries, as the tracker records it."""
    job_id, file_ids = await submit_job(pool, await user_id(pool, owner), files=files)
    async with pool.acquire() as connection:
        for file_id in file_ids:
            await project(connection, started(job_id, file_id))
            await project(connection, failed(job_id, file_id, attempts=3))
    return job_id, file_ids


async def _command(pool: asyncpg.Pool, file_id: FileId) -> str:
    body: bytes = await pool.fetchval(
        "SELECT body FROM outbox WHERE file_id = $1 ORDER BY id LIMIT 1", file_id
    )
    return body.decode()


async def _letter(
    redis: Redis,
    body: str,
    *,
    stream: str = LANE,
    error: str = "TransientError: HTTP 500 from 127.0.0.1",
    failed_at: float | None = None,
) -> str:
    letter = DeadLetter(
        stream=stream,
        group="downloader",
        entry_id="1700000000000-0",
        error=error,
        attempts=3,
        consumer="host-1",
        failed_at=time.time() if failed_at is None else failed_at,
        body=body,
    )
    entry_id = await redis.xadd(DEAD_STREAM, {b"letter": msgspec.json.encode(letter)})
    return str(entry_id.decode())


async def _ids(client: Client, admin: dict[str, str], **params: Any) -> list[str]:
    response = await client.get(LETTERS, params=params, headers=admin)
    assert response.status_code == 200, response.text
    return [letter["id"] for letter in response.json()["dead_letters"]]


async def _file_status(pool: asyncpg.Pool, file_id: str) -> str:
    status: str = await pool.fetchval("SELECT status FROM files WHERE id = $1", file_id)
    return status


async def _commands_for(pool: asyncpg.Pool, file_id: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM outbox WHERE file_id = $1", file_id)
    return count


async def _remaining(redis: Redis) -> set[str]:
    return {entry_id.decode() for entry_id, _ in await redis.xrange(DEAD_STREAM)}


# --- who may call -----------------------------------------------------------------------------


async def test_bulk_actions_answer_403_to_users_and_change_nothing(
    client: Client, auth: dict[str, str], redis: Redis
) -> None:
    letter = await _letter(redis, "poison")

    for path in (RETRY, DISCARD):
        as_user = await client.post(path, json={"filter": {}}, headers=auth)
        anonymous = await client.post(path, json={"filter": {}})

        assert as_user.status_code == 403, (path, as_user.text)
        assert anonymous.status_code == 401, path
    assert await _remaining(redis) == {letter}


# --- filters --------------------------------------------------------------------------------


async def test_listing_filters_by_kind_stream_error_job_task_and_failure_time(
    client: Client, admin: dict[str, str], pool: asyncpg.Pool, redis: Redis
) -> None:
    job_a, files_a = await _failed_job(pool, "alice", 2)
    job_b, (file_b,) = await _failed_job(pool, "bob", 1)
    a1 = await _letter(redis, await _command(pool, files_a[0]), failed_at=1_000_000.0)
    a2 = await _letter(redis, await _command(pool, files_a[1]), error="TimeoutError: read")
    b1 = await _letter(redis, await _command(pool, file_b))
    task_body = '{"type":"task.run","task_id":"t-1","user_id":"u-1","task":"resize"}'
    task = await _letter(redis, task_body, stream=TASK_LANE, error="ValueError: bad size")
    event = await _letter(redis, f'{{"job_id":"{job_b}"}}', stream=EVENTS_STREAM)

    assert await _ids(client, admin) == [event, task, b1, a2, a1]
    assert await _ids(client, admin, kind="download") == [b1, a2, a1]
    assert await _ids(client, admin, kind="task") == [task]
    assert await _ids(client, admin, kind="event") == [event]
    assert await _ids(client, admin, stream=TASK_LANE) == [task]
    assert await _ids(client, admin, error="timeouterror") == [a2]  # any case
    assert await _ids(client, admin, job_id=job_a) == [a2, a1]
    assert await _ids(client, admin, job_id=job_b) == [event, b1]  # a body naming the job
    assert await _ids(client, admin, task="resize") == [task]
    assert await _ids(client, admin, failed_before="1970-01-13T00:00:00Z") == [a1]
    assert await _ids(client, admin, failed_after="1970-01-13T00:00:00") == [event, task, b1, a2]
    assert await _ids(client, admin, kind="download", error="HTTP 500") == [b1, a1]
    assert await _ids(client, admin, kind="export") == []
    page = await client.get(
        LETTERS, params={"kind": "download", "per_page": 2, "page": 2}, headers=admin
    )
    assert page.json()["total"] == 3
    assert [letter["id"] for letter in page.json()["dead_letters"]] == [a1]
    assert page.json()["dead_letters"][0]["kind"] == "download"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"kind": "bogus"}, "kind"),
        ({"failed_after": "yesterday"}, "failed_after"),
        (
            {"failed_after": "2026-01-02T00:00:00Z", "failed_before": "2026-01-01T00:00:00Z"},
            "failed_after",
        ),
        ({"error": ""}, "error"),
        ({"job_id": "x" * 201}, "job_id"),
    ],
)
async def test_a_bad_filter_answers_400_naming_the_parameter(
    client: Client, admin: dict[str, str], params: dict[str, str], named: str
) -> None:
    response = await client.get(LETTERS, params=params, headers=admin)

    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "ids, filter"),
        ({"ids": ["1-0"], "filter": {}}, "ids, filter"),
        ({"ids": ["not-an-id"]}, "ids"),
        ({"ids": []}, "ids"),
        ({"filter": {"kind": "bogus"}}, "filter.kind"),
        ({"filter": {"colour": "red"}}, "colour"),
        ({"filter": {}, "limit": 0}, "limit"),
        (
            {
                "filter": {
                    "failed_after": "2026-01-02T00:00:00Z",
                    "failed_before": "2026-01-01T00:00:00Z",
                }
            },
            "failed_after",
        ),
    ],
)
async def test_a_bad_selection_answers_400_naming_the_field_and_touches_nothing(
    client: Client, admin: dict[str, str], redis: Redis, body: dict[str, Any], named: str
) -> None:
    letter = await _letter(redis, "poison")

    for path in (RETRY, DISCARD):
        response = await client.post(path, json=body, headers=admin)

        assert response.status_code == 400, (path, response.text)
        assert named in response.json()["detail"], response.json()
    assert await _remaining(redis) == {letter}


# --- bulk retry -----------------------------------------------------------------------------


async def test_retry_all_matching_redrives_exactly_the_filtered_letters(
    client: Client, admin: dict[str, str], pool: asyncpg.Pool, redis: Redis
) -> None:
    job_a, files_a = await _failed_job(pool, "alice", 2)
    _, (file_b,) = await _failed_job(pool, "bob", 1)
    a_letters = [await _letter(redis, await _command(pool, f)) for f in files_a]
    b_letter = await _letter(redis, await _command(pool, file_b))
    poison = await _letter(redis, "poison", stream=EVENTS_STREAM)

    response = await client.post(RETRY, json={"filter": {"job_id": job_a}}, headers=admin)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["matched"], answer["requeued"], answer["remaining"]) == (2, 2, 0)
    assert answer["skipped"] == []
    assert [(r["id"], r["file_id"]) for r in answer["letters"]] == list(
        zip(a_letters, files_a, strict=True)
    )  # oldest first
    assert await _remaining(redis) == {b_letter, poison}
    assert [await _file_status(pool, f) for f in files_a] == ["pending", "pending"]
    assert await _file_status(pool, file_b) == "failed"
    assert [await _commands_for(pool, f) for f in (*files_a, file_b)] == [2, 2, 1]
    job = await pool.fetchrow("SELECT status, finished_at FROM jobs WHERE id = $1", job_a)
    assert (job["status"], job["finished_at"]) == ("in_progress", None)

    again = await client.post(RETRY, json={"filter": {"job_id": job_a}}, headers=admin)
    assert (again.json()["matched"], again.json()["requeued"]) == (0, 0)
    by_id = await client.post(RETRY, json={"ids": [a_letters[0]]}, headers=admin)
    assert by_id.json()["skipped"] == [
        {"id": a_letters[0], "status_code": 404, "reason": f"dead letter {a_letters[0]} not found"}
    ]
    assert [await _commands_for(pool, f) for f in files_a] == [2, 2]


async def test_a_letter_redriven_twice_at_once_is_redriven_once(
    client: Client, admin: dict[str, str], pool: asyncpg.Pool, redis: Redis
) -> None:
    _, (file_id,) = await _failed_job(pool, "alice", 1)
    body = await _command(pool, file_id)
    # The same dead work twice on the stream (a duplicate delivery dead-lettered twice).
    first, second = await _letter(redis, body), await _letter(redis, body)

    answers = await asyncio.gather(
        client.post(RETRY, json={"ids": [first, second]}, headers=admin),
        client.post(RETRY, json={"filter": {"kind": "download"}}, headers=admin),
    )

    assert [a.status_code for a in answers] == [200, 200]
    assert sum(a.json()["requeued"] for a in answers) == 1
    refusals = [s for a in answers for s in a.json()["skipped"]]
    assert {s["status_code"] for s in refusals} <= {404, 409}
    assert any("queued again already" in s["reason"] for s in refusals), refusals
    assert await _commands_for(pool, file_id) == 2  # submit's command and one re-drive


async def test_a_limit_redrives_the_oldest_and_says_how_many_remain(
    client: Client, admin: dict[str, str], pool: asyncpg.Pool, redis: Redis
) -> None:
    _, files = await _failed_job(pool, "alice", 3)
    letters = [await _letter(redis, await _command(pool, f)) for f in files]

    response = await client.post(RETRY, json={"filter": {}, "limit": 2}, headers=admin)

    answer = response.json()
    assert (answer["matched"], answer["requeued"], answer["remaining"]) == (3, 2, 1)
    assert [r["id"] for r in answer["letters"]] == letters[:2]
    assert await _remaining(redis) == {letters[2]}


# --- discard --------------------------------------------------------------------------------


async def test_discard_removes_exactly_the_matching_letters_and_logs_each(
    client: Client,
    admin: dict[str, str],
    pool: asyncpg.Pool,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id, (slow, broken) = await _failed_job(pool, "alice", 2)
    timed_out = await _letter(redis, await _command(pool, slow), error="TimeoutError: read")
    kept = await _letter(redis, await _command(pool, broken))

    with caplog.at_level(logging.WARNING, logger="services.gateway.dead_letters.bulk"):
        response = await client.post(DISCARD, json={"filter": {"error": "timeout"}}, headers=admin)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "matched": 1,
        "discarded": 1,
        "ids": [timed_out],
        "skipped": [],
        "remaining": 0,
    }
    assert await _remaining(redis) == {kept}
    (record,) = [r for r in caplog.records if "discarded" in r.getMessage()]
    assert timed_out in record.getMessage()
    assert "root" in record.getMessage()
    assert (record.file_id, record.job_id) == (slow, job_id)  # type: ignore[attr-defined]
    # The work stays as it ended: nothing is queued again.
    assert await _file_status(pool, slow) == "failed"
    assert await _commands_for(pool, slow) == 1
    again = await client.post(DISCARD, json={"ids": [timed_out]}, headers=admin)
    assert (again.json()["discarded"], again.json()["skipped"][0]["status_code"]) == (0, 404)


# --- an owner's failed files and tasks ----------------------------------------------------


async def test_retry_failed_reopens_the_jobs_failed_files_and_drops_their_letters(
    client: Client,
    make_auth: TokenFactory,
    pool: asyncpg.Pool,
    redis: Redis,
) -> None:
    alice = await make_auth("alice")
    job_id, (good, bad, worse) = await submit_job(pool, await user_id(pool, "alice"), files=3)
    async with pool.acquire() as connection:
        await project(connection, downloaded(job_id, good))
        await project(connection, failed(job_id, bad))
        await project(connection, failed(job_id, worse))
    await redis.set(cancelled_key(job_id), b"1")  # as a timed-out job keeps it
    bad_letter = await _letter(redis, await _command(pool, bad))
    _, (other,) = await _failed_job(pool, "bob", 1)
    other_letter = await _letter(redis, await _command(pool, other))
    path = f"/api/v1/downloads/jobs/{job_id}/retry-failed"

    as_bob = await client.post(path, headers=await make_auth("bob"))
    response = await client.post(path, headers=alice)

    assert as_bob.status_code == 404, as_bob.text
    assert response.status_code == 200, response.text
    assert response.json() == {"job_id": job_id, "requeued": 2, "file_ids": [bad, worse]}
    statuses = [await _file_status(pool, f) for f in (good, bad, worse)]
    assert statuses == ["completed", "pending", "pending"]
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "in_progress"
    assert not await redis.exists(cancelled_key(job_id))
    assert await _remaining(redis) == {other_letter}  # bad's letter would re-drive it twice
    assert bad_letter not in await _remaining(redis)
    again = await client.post(path, headers=alice)
    assert again.json()["requeued"] == 0
    assert [await _commands_for(pool, f) for f in (bad, worse)] == [2, 2]


async def test_retry_failed_of_a_cancelled_job_answers_409(
    client: Client, auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    submitted = await client.post(
        "/api/v1/downloads/download", json={"urls": ["http://127.0.0.1:9/a"]}, headers=auth
    )
    job_id = submitted.json()["job_id"]
    await client.post(f"/api/v1/downloads/jobs/{job_id}/cancel", headers=auth)

    response = await client.post(f"/api/v1/downloads/jobs/{job_id}/retry-failed", headers=auth)

    assert response.status_code == 409, response.text
    assert "cancelled" in response.json()["detail"]


@pytest.mark.usefixtures("registered_tasks")
async def test_tasks_retry_reopens_the_callers_failed_and_dead_tasks_matching(
    client: Client, make_auth: TokenFactory, pool: asyncpg.Pool, redis: Redis
) -> None:
    alice, bob = await make_auth("alice"), await make_auth("bob")

    async def task(auth: dict[str, str], name: str, status: str, **args: Any) -> str:
        made = await client.post("/api/v1/tasks", json={"task": name, "args": args}, headers=auth)
        task_id: str = made.json()["task_id"]
        await pool.execute(
            "UPDATE tasks SET status = $2, attempts = 3, finished_at = now() WHERE id = $1",
            task_id,
            status,
        )
        return task_id

    dead = await task(alice, "flaky", "dead", fail_times=3)
    broken = await task(alice, "flaky", "failed", fail_times=9)
    done = await task(alice, "flaky", "completed", fail_times=0)
    other_task = await task(alice, "add", "dead", a=1)
    bobs = await task(bob, "flaky", "dead", fail_times=3)
    dead_body = await pool.fetchval("SELECT command FROM tasks WHERE id = $1", dead)
    dead_letter = await _letter(redis, dead_body.decode(), stream=TASK_LANE)

    only_dead = await client.post(
        "/api/v1/tasks/retry", json={"task": "flaky", "status": ["dead"]}, headers=alice
    )
    rest = await client.post("/api/v1/tasks/retry", json={"task": "flaky"}, headers=alice)

    assert only_dead.status_code == 200, only_dead.text
    assert only_dead.json() == {
        "matched": 1,
        "requeued": 1,
        "task_ids": [dead],
        "skipped": [],
        "remaining": 0,
    }
    assert rest.json()["task_ids"] == [broken]
    rows = await pool.fetch("SELECT id::text, status FROM tasks")
    statuses = {row["id"]: row["status"] for row in rows}
    assert statuses == {
        dead: "pending",
        broken: "pending",
        done: "completed",
        other_task: "dead",
        bobs: "dead",
    }
    assert dead_letter not in await _remaining(redis)


async def test_tasks_retry_refuses_a_status_that_cannot_be_retried(
    client: Client, auth: dict[str, str]
) -> None:
    response = await client.post("/api/v1/tasks/retry", json={"status": ["running"]}, headers=auth)

    assert response.status_code == 400, response.text
    assert "status" in response.json()["detail"]
