"""Admin routes for dead letters: who may call them, listing, and re-driving their work."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from redis.asyncio import Redis

from services.gateway.reconciler import Reconciler
from services.gateway.tracker import project
from shared.consumer import ATTEMPT_HEADER, DeadLetter
from shared.events import EVENT_DECODER, JobFinished
from shared.streams import DEAD_STREAM, EVENTS_STREAM, cancelled_key, download_stream, lane_for
from tests.gateway.support import downloaded, eventually, failed, started, stream_frames

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.events import PipelineEvent
    from shared.ids import FileId, JobId
    from shared.settings import Settings
    from tests.gateway.conftest import TokenFactory

LETTERS = "/api/v1/dead-letters"
SUBMIT = "/api/v1/downloads/download"
LANE = download_stream(lane_for(5))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def admin(make_auth: TokenFactory) -> dict[str, str]:
    return await make_auth("root", admin=True)


async def _apply(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)


async def _submit(
    client: AsyncTestClient[Litestar],
    pool: asyncpg.Pool,
    headers: dict[str, str],
    count: int = 1,
) -> tuple[JobId, list[FileId]]:
    body = {"urls": [f"http://127.0.0.1:9/{n}.tif" for n in range(count)]}
    response = await client.post(SUBMIT, json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    rows = await pool.fetch("SELECT id FROM files WHERE job_id = $1 ORDER BY position", job_id)
    return job_id, [str(row["id"]) for row in rows]


async def _command_body(pool: asyncpg.Pool, file_id: FileId) -> str:
    body: bytes = await pool.fetchval(
        "SELECT body FROM outbox WHERE file_id = $1 ORDER BY id LIMIT 1", file_id
    )
    return body.decode()


async def _dead_letter(
    redis: Redis,
    body: str,
    *,
    stream: str = LANE,
    group: str = "downloader",
    error: str = "PermanentError: HTTP 404",
    attempts: int = 3,
) -> str:
    letter = DeadLetter(
        stream=stream,
        group=group,
        entry_id="1700000000000-0",
        error=error,
        attempts=attempts,
        consumer="host-1",
        failed_at=time.time(),
        body=body,
        headers={ATTEMPT_HEADER: "2", "correlation_id": "c-1", "traceparent": "x"},
    )
    entry_id = await redis.xadd(DEAD_STREAM, {b"letter": msgspec.json.encode(letter)})
    return str(entry_id.decode())


async def _row(pool: asyncpg.Pool, table: str, row_id: str) -> dict[str, Any]:
    return dict(await pool.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id))


async def _finished(pool: asyncpg.Pool) -> list[JobFinished]:
    rows = await pool.fetch("SELECT body FROM outbox WHERE stream = $1 ORDER BY id", EVENTS_STREAM)
    return [e for r in rows if isinstance(e := EVENT_DECODER.decode(r["body"]), JobFinished)]


# --- who may call -----------------------------------------------------------------------------


async def test_admin_routes_answer_403_to_users_and_401_without_a_token(
    client: AsyncTestClient[Litestar], auth: dict[str, str], redis: Redis
) -> None:
    letter = await _dead_letter(redis, "poison")

    for method, path in (("GET", LETTERS), ("POST", f"{LETTERS}/{letter}/retry")):
        as_user = await client.request(method, path, headers=auth)
        anonymous = await client.request(method, path)

        assert as_user.status_code == 403, (method, path, as_user.text)
        assert anonymous.status_code == 401, (method, path)
    assert await redis.xlen(DEAD_STREAM) == 1  # nothing was re-driven


# --- listing --------------------------------------------------------------------------------


async def test_dead_letters_are_listed_newest_first_with_their_command(
    client: AsyncTestClient[Litestar],
    admin: dict[str, str],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    redis: Redis,
) -> None:
    job_id, (file_id,) = await _submit(client, pool, auth)
    body = await _command_body(pool, file_id)
    older = await _dead_letter(redis, body)
    newer = await _dead_letter(redis, "not json at all", error="PoisonMessage: undecodable")

    response = await client.get(LETTERS, headers=admin)

    assert response.status_code == 200, response.text
    page = response.json()
    assert (page["page"], page["per_page"], page["total"]) == (1, 20, 2)
    poison, command = page["dead_letters"]
    assert poison["id"] == newer
    assert poison["body"] == "not json at all"
    assert poison["error"] == "PoisonMessage: undecodable"
    assert poison["job_id"] is None
    assert command["id"] == older
    assert command["stream"] == LANE
    assert command["group"] == "downloader"
    assert command["attempts"] == 3
    assert command["consumer"] == "host-1"
    assert command["entry_id"] == "1700000000000-0"
    assert command["failed_at"].endswith(("Z", "+00:00"))
    assert (command["job_id"], command["file_id"]) == (job_id, file_id)
    assert command["url"] == "http://127.0.0.1:9/0.tif"
    assert command["body"]["type"] == "download.file"
    assert command["body"]["file_id"] == file_id

    second = (await client.get(LETTERS, params={"page": 2, "per_page": 1}, headers=admin)).json()
    assert [letter["id"] for letter in second["dead_letters"]] == [older]
    assert second["total"] == 2
    beyond = (await client.get(LETTERS, params={"page": 3, "per_page": 1}, headers=admin)).json()
    assert beyond["dead_letters"] == []


async def test_an_empty_dead_letter_stream_lists_nothing(
    client: AsyncTestClient[Litestar], admin: dict[str, str]
) -> None:
    response = await client.get(LETTERS, headers=admin)

    assert response.status_code == 200
    assert response.json() == {"dead_letters": [], "page": 1, "per_page": 20, "total": 0}


# --- re-driving -----------------------------------------------------------------------------


async def test_retry_reopens_the_file_and_the_job_and_the_job_ends_again(
    client: AsyncTestClient[Litestar],
    admin: dict[str, str],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    redis: Redis,
) -> None:
    job_id, (good, bad) = await _submit(client, pool, auth, count=2)
    await _apply(
        pool,
        started(job_id, good),
        downloaded(job_id, good),
        started(job_id, bad),
        failed(job_id, bad, attempts=3),
    )
    assert (await _row(pool, "jobs", job_id))["status"] == "partial"
    body = await _command_body(pool, bad)
    letter = await _dead_letter(redis, body)

    async def both_published() -> bool:
        return int(await redis.xlen(LANE)) == 2

    await eventually(both_published, what="the submitted commands on the lane")

    response = await client.post(f"{LETTERS}/{letter}/retry", headers=admin)

    assert response.status_code == 202, response.text
    assert response.json() == {
        "id": letter,
        "status": "requeued",
        "job_id": job_id,
        "file_id": bad,
        "task_id": None,
    }
    assert await redis.xlen(DEAD_STREAM) == 0
    file = await _row(pool, "files", bad)
    assert (file["status"], file["error"], file["attempts"]) == ("pending", None, 3)
    job = await _row(pool, "jobs", job_id)
    assert (job["status"], job["finished_at"], job["error"]) == ("in_progress", None, None)
    assert job["reopened_at"] is not None
    rows = await pool.fetch("SELECT body FROM outbox WHERE file_id = $1 ORDER BY id", bad)
    assert [row["body"].decode() for row in rows] == [body, body]  # the original command

    async def redriven() -> bool:
        return int(await redis.xlen(LANE)) == 3

    await eventually(redriven, what="the relay to publish the re-driven command")
    frames = await stream_frames(redis, LANE)
    assert frames[-1][0].decode() == body
    assert ATTEMPT_HEADER not in frames[-1][1]  # a fresh set of tries

    # The re-driven download succeeds this time: the job ends again, with the right counts.
    await _apply(pool, started(job_id, bad, attempt=1), downloaded(job_id, bad))
    assert (await _row(pool, "jobs", job_id))["status"] == "completed"
    first, second = await _finished(pool)
    assert (first.status, first.successful, first.failed) == ("partial", 1, 1)
    assert (second.status, second.successful, second.failed) == ("completed", 2, 0)


async def test_a_timed_out_job_can_be_re_driven_without_timing_out_again(
    client: AsyncTestClient[Litestar],
    admin: dict[str, str],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    redis: Redis,
    settings: Settings,
) -> None:
    job_id, (file_id,) = await _submit(client, pool, auth)
    await pool.execute("UPDATE jobs SET created_at = now() - interval '2 days'")
    reconciler = Reconciler(pool, redis, settings)
    assert (await reconciler.reconcile_once()).timed_out_jobs == 1
    assert await redis.exists(cancelled_key(job_id))
    letter = await _dead_letter(redis, await _command_body(pool, file_id))

    response = await client.post(f"{LETTERS}/{letter}/retry", headers=admin)

    assert response.status_code == 202, response.text
    # Downloaders would skip the command of a job flagged cancelled.
    assert not await redis.exists(cancelled_key(job_id))
    assert (await reconciler.reconcile_once()).timed_out_jobs == 0
    assert (await _row(pool, "jobs", job_id))["status"] == "in_progress"


async def test_a_letter_of_a_cancelled_job_answers_409_and_stays(
    client: AsyncTestClient[Litestar],
    admin: dict[str, str],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    redis: Redis,
) -> None:
    job_id, (file_id,) = await _submit(client, pool, auth)
    cancel = await client.post(f"/api/v1/downloads/jobs/{job_id}/cancel", headers=auth)
    assert cancel.status_code == 200
    letter = await _dead_letter(redis, await _command_body(pool, file_id))

    response = await client.post(f"{LETTERS}/{letter}/retry", headers=admin)

    assert response.status_code == 409, response.text
    assert "cancelled" in response.json()["detail"]
    assert await redis.xlen(DEAD_STREAM) == 1
    assert (await _row(pool, "files", file_id))["status"] == "cancelled"
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE file_id = $1", file_id) == 1


async def test_a_letter_of_a_file_stored_meanwhile_answers_409(
    client: AsyncTestClient[Litestar],
    admin: dict[str, str],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    redis: Redis,
) -> None:
    job_id, (file_id,) = await _submit(client, pool, auth)
    await _apply(pool, downloaded(job_id, file_id))  # a duplicate delivery made it after all
    letter = await _dead_letter(redis, await _command_body(pool, file_id))

    response = await client.post(f"{LETTERS}/{letter}/retry", headers=admin)

    assert response.status_code == 409
    assert (await _row(pool, "jobs", job_id))["status"] == "completed"


async def test_an_unknown_letter_answers_404(
    client: AsyncTestClient[Litestar], admin: dict[str, str], redis: Redis
) -> None:
    await _dead_letter(redis, "poison")

    for letter_id in ("1-0", "0-1", "not-an-id", "12345"):
        response = await client.post(f"{LETTERS}/{letter_id}/retry", headers=admin)

        assert response.status_code == 404, (letter_id, response.text)
        assert "not found" in response.json()["detail"]
    assert await redis.xlen(DEAD_STREAM) == 1


async def test_a_poison_letter_goes_back_onto_its_stream_as_it_was(
    client: AsyncTestClient[Litestar], admin: dict[str, str], redis: Redis
) -> None:
    other_lane = download_stream(lane_for(9))
    letter = await _dead_letter(redis, '{"type": "download.file", "url": 7}', stream=other_lane)
    # A stream this app does not consume, so the body stays where it lands.
    event_stream = "downlink:test-events"
    event_letter = await _dead_letter(
        redis,
        '{"type":"file.failed","job_id":"j-1","file_id":"f-1"}',
        stream=event_stream,
        group="auditor",
    )

    response = await client.post(f"{LETTERS}/{letter}/retry", headers=admin)
    event_response = await client.post(f"{LETTERS}/{event_letter}/retry", headers=admin)

    assert response.status_code == 202, response.text
    assert response.json() == {
        "id": letter,
        "status": "requeued",
        "job_id": None,
        "file_id": None,
        "task_id": None,
    }
    assert event_response.json()["job_id"] == "j-1"
    assert event_response.json()["file_id"] == "f-1"
    assert await redis.xlen(DEAD_STREAM) == 0
    ((body, headers),) = await stream_frames(redis, other_lane)
    assert body == b'{"type": "download.file", "url": 7}'
    assert ATTEMPT_HEADER not in headers  # it gets a full set of tries again
    assert headers["correlation_id"] == "c-1"
    events = await stream_frames(redis, event_stream)
    assert [b for b, _ in events] == [b'{"type":"file.failed","job_id":"j-1","file_id":"f-1"}']
