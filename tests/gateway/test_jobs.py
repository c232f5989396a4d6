"""Job status, results, listing, cancellation, and users kept apart."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from services.gateway.tracker import project
from shared.events import EVENT_DECODER, JobFinished
from shared.ids import FileId, JobId
from shared.streams import CANCEL_CHANNEL, cancelled_key
from tests.gateway.support import downloaded, failed, progress, started, submit_job, user_id

if TYPE_CHECKING:
    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.events import PipelineEvent
    from shared.settings import Settings
    from tests.gateway.conftest import TokenFactory

API = "/api/v1/downloads"


async def _apply(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)


async def _submit(
    client: AsyncTestClient[Litestar], headers: dict[str, str], count: int = 2, **extra: Any
) -> JobId:
    body = {"urls": [f"http://127.0.0.1:9/{n}.tif" for n in range(count)], **extra}
    response = await client.post(f"{API}/download", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return JobId(response.json()["job_id"])


async def _files(pool: asyncpg.Pool, job: JobId) -> list[FileId]:
    rows = await pool.fetch("SELECT id FROM files WHERE job_id = $1 ORDER BY position", job)
    return [FileId(str(row["id"])) for row in rows]


async def test_status_shows_progress_of_the_files(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job = await _submit(client, auth, count=3, priority=7, metadata={"scene": "S2A"})
    files = await _files(pool, job)

    fresh = (await client.get(f"{API}/jobs/{job}", headers=auth)).json()
    await _apply(
        pool,
        started(job, files[0]),
        downloaded(job, files[0], b"x" * 100),
        started(job, files[1]),
        progress(job, files[1], 40, 80),
    )
    response = await client.get(f"{API}/jobs/{job}", headers=auth)

    assert fresh["status"] == "pending"
    assert fresh["progress"] == {
        "total": 3,
        "completed": 0,
        "failed": 0,
        "percentage": 0.0,
        "current_file": None,
        "bytes_downloaded": 0,
    }
    assert response.status_code == 200
    status = response.json()
    assert status["job_id"] == job
    assert status["status"] == "in_progress"
    assert status["priority"] == 7
    assert status["metadata"] == {"scene": "S2A"}
    assert status["error"] is None
    assert status["updated_at"] >= status["created_at"]
    assert status["progress"] == {
        "total": 3,
        "completed": 1,
        "failed": 0,
        "percentage": 33.3,
        "current_file": "http://127.0.0.1:9/1.tif",
        "bytes_downloaded": 140,
    }


async def test_result_lists_every_file_and_sums_them_up(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job = await _submit(client, auth, count=3)
    files = await _files(pool, job)
    stored = downloaded(job, files[0], b"a" * 10, name="a.tif")
    await _apply(
        pool,
        stored,
        downloaded(job, files[2], b"c" * 5, name="c.tif"),
        failed(job, files[1]),
    )

    response = await client.get(f"{API}/jobs/{job}/result", headers=auth)

    assert response.status_code == 200
    result = response.json()
    assert result["job_id"] == job
    assert result["status"] == "partial"
    assert result["summary"] == {
        "total_requested": 3,
        "successful": 2,
        "failed": 1,
        "total_size": 15,
    }
    first, second, third = result["results"]
    assert first["file_id"] == files[0]
    assert first["url"] == "http://127.0.0.1:9/0.tif"
    assert first["status"] == "completed"
    assert first["filepath"] == stored.filepath
    assert first["filename"] == "a.tif"
    assert first["size"] == 10
    assert first["hash"] == stored.sha256
    assert first["downloaded_at"].endswith("Z")
    assert first["error"] is None
    assert second["status"] == "failed"
    assert "404" in second["error"]
    assert second["filepath"] is None
    assert third["filename"] == "c.tif"


async def test_list_pages_newest_first_and_filters_by_status(
    client: AsyncTestClient[Litestar], auth: dict[str, str], make_auth: TokenFactory
) -> None:
    jobs = [await _submit(client, auth, count=1) for _ in range(3)]
    await _submit(client, await make_auth("bob"), count=1)  # not alice's
    cancel = await client.post(f"{API}/jobs/{jobs[1]}/cancel", headers=auth)
    assert cancel.status_code == 200

    page_1 = (await client.get(f"{API}/jobs?per_page=2", headers=auth)).json()
    page_2 = (await client.get(f"{API}/jobs?per_page=2&page=2", headers=auth)).json()
    past_end = (await client.get(f"{API}/jobs?per_page=2&page=9", headers=auth)).json()
    cancelled = (await client.get(f"{API}/jobs?status_filter=cancelled", headers=auth)).json()
    pending = (await client.get(f"{API}/jobs?status_filter=pending", headers=auth)).json()
    unfiltered = (await client.get(f"{API}/jobs?status_filter=", headers=auth)).json()

    assert [j["job_id"] for j in page_1["jobs"]] == [jobs[2], jobs[1]]
    assert (page_1["page"], page_1["per_page"], page_1["total"]) == (1, 2, 3)
    assert [j["job_id"] for j in page_2["jobs"]] == [jobs[0]]
    assert page_2["total"] == 3
    assert past_end["jobs"] == []
    assert [j["job_id"] for j in cancelled["jobs"]] == [jobs[1]]
    assert cancelled["total"] == 1
    assert [j["job_id"] for j in pending["jobs"]] == [jobs[2], jobs[0]]
    assert unfiltered["total"] == 3
    assert page_1["jobs"][0]["progress"]["total"] == 1


async def test_list_refuses_bad_parameters_naming_them(
    client: AsyncTestClient[Litestar], auth: dict[str, str]
) -> None:
    for query, name in [
        ("status_filter=done", "status_filter"),
        ("page=0", "page"),
        ("page=abc", "page"),
        ("per_page=0", "per_page"),
        ("per_page=101", "per_page"),
    ]:
        response = await client.get(f"{API}/jobs?{query}", headers=auth)

        assert response.status_code == 400, query
        assert response.json()["detail"].startswith(name), (query, response.json())


async def test_cancel_marks_the_job_and_tells_the_downloaders(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    redis_url: str,
    settings: Settings,
) -> None:
    job = await _submit(client, auth, count=3)
    files = await _files(pool, job)
    await _apply(
        pool,
        started(job, files[0]),
        downloaded(job, files[0]),
        started(job, files[1]),
    )
    redis = Redis.from_url(redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(CANCEL_CHANNEL)
    try:
        response = await client.post(
            f"{API}/jobs/{job}/cancel", json={"reason": "wrong scene"}, headers=auth
        )
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                break
        again = await client.post(f"{API}/jobs/{job}/cancel", headers=auth)
        flag = await redis.get(cancelled_key(job))
        ttl = await redis.ttl(cancelled_key(job))
    finally:
        await pubsub.aclose()
        await redis.aclose()

    assert response.status_code == 200
    assert response.json() == {"job_id": job, "status": "cancelled"}
    assert again.status_code == 409
    assert again.json()["status_code"] == 409
    assert "cancelled" in again.json()["detail"]
    assert flag == b"1"
    assert settings.retention_days * 86_400 - 60 < ttl <= settings.retention_days * 86_400
    assert message is not None
    assert message["data"] == job.encode()
    job_row = await pool.fetchrow("SELECT status, error, finished_at FROM jobs")
    assert job_row["status"] == "cancelled"
    assert job_row["error"] == "wrong scene"
    assert job_row["finished_at"] is not None
    statuses = [r["status"] for r in await pool.fetch("SELECT status FROM files ORDER BY position")]
    assert statuses == ["completed", "cancelled", "cancelled"]
    body = await pool.fetchval(
        "SELECT body FROM outbox WHERE stream = 'downlink:events' ORDER BY id DESC LIMIT 1"
    )
    finished = EVENT_DECODER.decode(body)
    assert isinstance(finished, JobFinished)
    assert (finished.status, finished.successful, finished.failed) == ("cancelled", 1, 2)


async def test_cancel_without_a_body_and_after_the_job_ended(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    open_job = await _submit(client, auth, count=1)
    done_job = await _submit(client, auth, count=1)
    (done_file,) = await _files(pool, done_job)
    await _apply(pool, downloaded(done_job, done_file))

    cancelled = await client.post(f"{API}/jobs/{open_job}/cancel", headers=auth)
    ended = await client.post(f"{API}/jobs/{done_job}/cancel", headers=auth)
    bad_body = await client.post(f"{API}/jobs/{open_job}/cancel", json={"why": 1}, headers=auth)

    assert cancelled.status_code == 200
    assert await pool.fetchval("SELECT error FROM jobs WHERE id = $1", open_job)
    assert ended.status_code == 409
    assert "completed" in ended.json()["detail"]
    assert bad_body.status_code == 400
    assert "why" in bad_body.json()["detail"]


async def test_another_users_job_result_cancel_and_file_answer_404(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    make_auth: TokenFactory,
    pool: asyncpg.Pool,
) -> None:
    bob = await user_id(pool, "bob")
    job, files = await submit_job(pool, bob, files=1)
    await _apply(pool, downloaded(job, files[0]))

    calls = [
        ("GET", f"{API}/jobs/{job}"),
        ("GET", f"{API}/jobs/{job}/result"),
        ("POST", f"{API}/jobs/{job}/cancel"),
        ("GET", f"{API}/files/{files[0]}"),
    ]
    for method, path in calls:
        response = await client.request(method, path, headers=auth)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["status_code"] == 404
    listed = (await client.get(f"{API}/jobs", headers=auth)).json()
    assert listed["total"] == 0
    assert await pool.fetchval("SELECT status FROM jobs") == "completed"


async def test_unknown_and_malformed_ids_answer_404(
    client: AsyncTestClient[Litestar], auth: dict[str, str]
) -> None:
    for path in [
        f"{API}/jobs/00000000-0000-4000-8000-000000000000",
        f"{API}/jobs/00000000-0000-4000-8000-000000000000/result",
        f"{API}/jobs/not-a-uuid",
        f"{API}/files/00000000-0000-4000-8000-000000000000",
    ]:
        response = await client.get(path, headers=auth)
        assert response.status_code == 404, path
        assert response.json()["status_code"] == 404


async def test_concurrent_idempotent_submissions_make_one_job(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    headers = {**auth, "Idempotency-Key": "same"}
    body = {"urls": ["http://127.0.0.1:9/x"]}

    responses = await asyncio.gather(
        *(client.post(f"{API}/download", json=body, headers=headers) for _ in range(5))
    )

    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["job_id"] for r in responses}) == 1
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
