"""POST /api/v1/downloads/download: one transaction, the relay to the right lane, bad bodies."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from shared.events import DOWNLOAD_DECODER, DownloadFile
from shared.streams import DOWNLOAD_LANES, download_stream, lane_for
from tests.gateway.support import eventually, stream_frames

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.gateway.conftest import TokenFactory

SUBMIT = "/api/v1/downloads/download"
SHA = "AB" * 32


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


async def test_submit_writes_job_files_and_outbox_and_publishes_to_the_lane(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    redis: Redis,
    spans: InMemorySpanExporter,
) -> None:
    body = {
        "urls": ["http://127.0.0.1:9/a.tif", "https://127.0.0.1:9/b.tif"],
        "files": [{"url": "http://127.0.0.1:9/c", "filename": "c.tif", "sha256": SHA}],
        "priority": 9,
        "metadata": {"project": "x", "n": 1},
        "process": ["thumbnail"],
        "export": {"format": "zip", "include_metadata": True},
    }

    response = await client.post(SUBMIT, json=body, headers=auth)

    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "pending"
    assert answer["queue_position"] == 1
    assert answer["estimated_time"] is None  # nothing finished in the last 5 minutes
    assert answer["created_at"].endswith("Z")
    assert "3" in answer["message"]
    job = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", answer["job_id"])
    assert job["priority"] == 9
    assert job["total_files"] == 3
    assert job["metadata"] == {"project": "x", "n": 1}
    assert job["options"] == {
        "process": ["thumbnail"],
        "export": {"format": "zip", "include_metadata": True},
    }
    files = await pool.fetch("SELECT * FROM files ORDER BY position")
    assert [f["url"] for f in files] == [*body["urls"], "http://127.0.0.1:9/c"]
    assert files[2]["requested_name"] == "c.tif"
    assert files[2]["expected_sha256"] == SHA.lower()
    assert all(f["status"] == "pending" for f in files)
    outbox = await pool.fetch("SELECT * FROM outbox ORDER BY id")
    assert len(outbox) == 3
    assert {row["stream"] for row in outbox} == {"downlink:downloads:high"}
    assert "traceparent" in outbox[0]["headers"]

    # The relay was woken by the commit: the commands are on the high lane, in file order.
    lane = download_stream(lane_for(9))

    async def published() -> bool:
        return int(await redis.xlen(lane)) == 3

    await eventually(published, timeout_s=3, what="the relay to publish")
    frames = await stream_frames(redis, lane)
    commands = [DOWNLOAD_DECODER.decode(frame_body) for frame_body, _headers in frames]
    assert [c.file_id for c in commands] == [str(f["id"]) for f in files]
    first = commands[2]
    assert isinstance(first, DownloadFile)
    assert first.job_id == answer["job_id"]
    assert first.url == "http://127.0.0.1:9/c"
    assert first.filename == "c.tif"
    assert first.sha256 == SHA.lower()
    assert first.priority == 9
    assert first.user_id == str(job["user_id"])
    _, headers = frames[0]
    assert headers["content-type"] == "application/json"
    # The trace runs from the HTTP request through the publish into the frame.
    request_trace = {s.context.trace_id for s in spans.get_finished_spans() if "POST" in s.name}
    frame_trace = int(headers["traceparent"].split("-")[1], 16)
    assert frame_trace in request_trace
    other_lanes = [s for s in DOWNLOAD_LANES if s != lane]
    assert [await redis.xlen(s) for s in other_lanes] == [0, 0]

    async def marked_sent() -> bool:
        return await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0

    await eventually(marked_sent, what="outbox rows marked sent")


async def test_priority_picks_the_lane(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    lanes = {1: "low", 3: "low", 4: "normal", 7: "normal", 8: "high", 10: "high"}
    for priority in lanes:
        response = await client.post(
            SUBMIT, json={"urls": ["http://127.0.0.1/x"], "priority": priority}, headers=auth
        )
        assert response.status_code == 202

    rows = await pool.fetch(
        "SELECT j.priority, o.stream FROM outbox o"
        " JOIN jobs j ON j.id = (convert_from(o.body, 'UTF8')::jsonb ->> 'job_id')::uuid"
    )
    assert {r["priority"]: r["stream"] for r in rows} == {
        priority: f"downlink:downloads:{lane}" for priority, lane in lanes.items()
    }


async def test_default_priority_is_5(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    response = await client.post(SUBMIT, json={"urls": ["http://127.0.0.1/x"]}, headers=auth)

    assert response.status_code == 202
    assert await pool.fetchval("SELECT priority FROM jobs") == 5


async def test_idempotency_key_returns_the_same_job_and_writes_nothing_new(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    make_auth: TokenFactory,
    pool: asyncpg.Pool,
) -> None:
    body = {"urls": ["http://127.0.0.1/a", "http://127.0.0.1/b"]}
    headers = {**auth, "Idempotency-Key": "order-42"}

    first = await client.post(SUBMIT, json=body, headers=headers)
    again = await client.post(SUBMIT, json=body, headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert again.json()["created_at"] == first.json()["created_at"]
    assert await _count(pool, "jobs") == 1
    assert await _count(pool, "files") == 2
    assert await _count(pool, "outbox") == 2

    # The key belongs to its user: someone else's equal key is another job.
    bob = {**await make_auth("bob"), "Idempotency-Key": "order-42"}
    other = await client.post(SUBMIT, json=body, headers=bob)
    assert other.status_code == 202
    assert other.json()["job_id"] != first.json()["job_id"]
    assert await _count(pool, "jobs") == 2


def _urls(count: int) -> list[str]:
    return [f"http://127.0.0.1/{n}" for n in range(count)]


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("priority-0", {"urls": _urls(1), "priority": 0}, "priority"),
    ("priority-11", {"urls": _urls(1), "priority": 11}, "priority"),
    ("priority-text", {"urls": _urls(1), "priority": "high"}, "priority"),
    ("priority-bool", {"urls": _urls(1), "priority": True}, "priority"),
    ("empty-urls", {"urls": []}, "urls"),
    ("nothing", {}, "urls"),
    ("10001-urls", {"urls": _urls(10_001)}, "urls"),
    ("10001-in-total", {"urls": _urls(5_000), "files": [{"url": u} for u in _urls(5_001)]}, "urls"),
    ("ftp", {"urls": [*_urls(3), "ftp://127.0.0.1/x"]}, "urls[3]: unsupported scheme 'ftp'"),
    ("file", {"urls": ["file:///etc/passwd"]}, "urls[0]: unsupported scheme 'file'"),
    ("no-scheme", {"urls": ["127.0.0.1/x"]}, "urls[0]"),
    ("no-host", {"urls": ["http:///x"]}, "urls[0]: missing host"),
    ("bad-port", {"urls": ["http://127.0.0.1:99999/x"]}, "urls[0]"),
    ("space", {"urls": ["http://127.0.0.1/a b"]}, "urls[0]"),
    ("url-not-string", {"urls": [1]}, "urls[0]"),
    ("file-url", {"files": [{"url": "gopher://127.0.0.1/"}]}, "files[0].url"),
    ("file-sha", {"files": [{"url": "http://127.0.0.1/", "sha256": "xyz"}]}, "files[0].sha256"),
    ("file-unknown", {"files": [{"url": "http://127.0.0.1/", "name": "a"}]}, "name"),
    ("unknown-field", {"urls": _urls(1), "priorty": 3}, "priorty"),
    ("metadata-list", {"urls": _urls(1), "metadata": [1]}, "metadata"),
    ("process", {"urls": _urls(1), "process": ["resize"]}, "process[0]"),
    ("composite", {"urls": _urls(1), "composites": [{"kind": "evi", "bands": {}}]}, "kind"),
    ("export", {"urls": _urls(1), "export": {"format": "rar"}}, "export.format"),
    ("not-an-object", [1, 2], "object"),
    ("timeout-short", {"urls": _urls(1), "timeout_s": 0}, "timeout_s"),
    ("timeout-long", {"urls": _urls(1), "timeout_s": 30 * 86_400 + 1}, "timeout_s"),
    ("timeout-text", {"urls": _urls(1), "timeout_s": "2d"}, "timeout_s"),
]


async def test_bad_bodies_answer_400_naming_the_field_and_write_nothing(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    # One app for all cases: starting one per case would cost a second each.
    for case, body, field in BAD_BODIES:
        response = await client.post(SUBMIT, json=body, headers=auth)

        assert response.status_code == 400, (case, response.text)
        answer = response.json()
        assert answer["status_code"] == 400, case
        assert field in answer["detail"], (case, answer)
    assert await _count(pool, "jobs") == 0
    assert await _count(pool, "files") == 0
    assert await _count(pool, "outbox") == 0


async def test_a_job_may_bring_its_own_timeout(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    for timeout_s in (1, 30 * 86_400, None):
        body: dict[str, Any] = {"urls": _urls(1)}
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        response = await client.post(SUBMIT, json=body, headers=auth)

        assert response.status_code == 202, response.text
        stored = await pool.fetchval(
            "SELECT timeout_s FROM jobs WHERE id = $1", response.json()["job_id"]
        )
        assert stored == timeout_s


async def test_malformed_json_answers_400_and_writes_nothing(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    for raw in (b"{", b"", b'{"urls": ["http://127.0.0.1/"]', b"\xff\xfe", b"null"):
        response = await client.post(
            SUBMIT, content=raw, headers={**auth, "Content-Type": "application/json"}
        )

        assert response.status_code == 400, (raw, response.text)
        assert response.json()["detail"], raw
    assert await _count(pool, "jobs") == 0


async def test_an_overlong_idempotency_key_is_refused(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    response = await client.post(
        SUBMIT,
        json={"urls": _urls(1)},
        headers={**auth, "Idempotency-Key": "k" * 256},
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert await _count(pool, "jobs") == 0


async def test_ten_thousand_urls_are_accepted(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    response = await client.post(SUBMIT, json={"urls": _urls(10_000)}, headers=auth)

    assert response.status_code == 202
    assert await _count(pool, "files") == 10_000
    assert await _count(pool, "outbox") == 10_000


async def test_queue_position_counts_waiting_files_of_older_jobs_in_the_same_lane(
    client: AsyncTestClient[Litestar], auth: dict[str, str], make_auth: TokenFactory
) -> None:
    async def submit(count: int, priority: int, headers: dict[str, str] = auth) -> dict[str, Any]:
        response = await client.post(
            SUBMIT, json={"urls": _urls(count), "priority": priority}, headers=headers
        )
        assert response.status_code == 202
        answer: dict[str, Any] = response.json()
        return answer

    first = await submit(3, 5)
    second = await submit(2, 6)  # same lane (normal)
    elsewhere = await submit(4, 9)  # high lane: nothing ahead of it there
    third = await submit(1, 4, await make_auth("bob"))  # another user, same lane

    assert first["queue_position"] == 1
    assert second["queue_position"] == 4
    assert elsewhere["queue_position"] == 1
    assert third["queue_position"] == 6


async def test_estimated_time_comes_from_recent_throughput(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    first = await client.post(SUBMIT, json={"urls": _urls(30), "priority": 5}, headers=auth)
    # 30 files of that job finished within the last 5 minutes: 0.1 files/s.
    await pool.execute(
        "UPDATE files SET status = 'completed', downloaded_at = now() - interval '1 minute'"
    )
    await client.post(SUBMIT, json={"urls": _urls(2), "priority": 5}, headers=auth)  # ahead

    response = await client.post(SUBMIT, json={"urls": _urls(3), "priority": 5}, headers=auth)

    assert first.json()["estimated_time"] is None
    answer = response.json()
    assert answer["queue_position"] == 3
    # (2 files ahead + 3 of its own) / 0.1 files per second.
    assert answer["estimated_time"] == pytest.approx(50.0)


async def test_submitted_commands_decode_as_the_downloader_reads_them(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    await client.post(SUBMIT, json={"urls": _urls(1), "metadata": {"a": 1}}, headers=auth)

    body = await pool.fetchval("SELECT body FROM outbox")

    command = DOWNLOAD_DECODER.decode(body)
    assert isinstance(command, DownloadFile)
    assert json.loads(body)["type"] == "download.file"
