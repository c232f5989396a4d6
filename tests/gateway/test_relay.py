"""The outbox relay: publishes in order, marks sent, survives outages, forgets old rows."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.gateway.outbox import OutboxRelay, purge_sent
from shared.postgres import open_pool
from shared.streams import EVENTS_STREAM, download_stream, lane_for, live_key
from tests.gateway.support import stream_frames, submit_job, user_id
from tests.support.ports import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def _add(pool: asyncpg.Pool, stream: str, body: bytes, headers: dict[str, str]) -> None:
    await pool.execute(
        "INSERT INTO outbox (stream, body, headers) VALUES ($1, $2, $3)", stream, body, headers
    )


async def test_relay_publishes_unsent_rows_in_order_and_marks_them_sent(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    for n in range(5):
        await _add(pool, "s:a" if n % 2 else "s:b", b'{"n":%d}' % n, {"traceparent": TRACEPARENT})
    await pool.execute("UPDATE outbox SET sent_at = now() WHERE id = 1")  # already sent
    relay = OutboxRelay(pool, redis, batch_size=2)

    counts = [await relay.relay_once() for _ in range(3)]

    assert counts == [2, 2, 0]
    a_frames = await stream_frames(redis, "s:a")
    b_frames = await stream_frames(redis, "s:b")
    assert [body for body, _ in a_frames] == [b'{"n":1}', b'{"n":3}']
    assert [body for body, _ in b_frames] == [b'{"n":2}', b'{"n":4}']  # row 1 was sent before
    _, headers = a_frames[0]
    assert headers["content-type"] == "application/json"
    # Same trace as the request that wrote the row; a new span (the publish) inside it.
    assert headers["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0


async def test_relay_wakes_at_once_and_stops_cleanly(pool: asyncpg.Pool, redis: Redis) -> None:
    relay = OutboxRelay(pool, redis, poll_interval_s=30)
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.1)

    await _add(pool, "s:w", b"{}", {})
    relay.wake()
    for _ in range(100):
        if await redis.xlen("s:w"):
            break
        await asyncio.sleep(0.01)
    relay.stop()
    await asyncio.wait_for(task, 2)

    assert await redis.xlen("s:w") == 1


async def test_relay_survives_a_redis_outage_and_keeps_the_rows(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await _add(pool, "s:x", b"{}", {})
    # No client-side retries: redis-py would otherwise spend seconds on each failed call.
    dead = Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    relay = OutboxRelay(pool, dead, poll_interval_s=0.05, max_backoff_s=0.1)
    task = asyncio.create_task(relay.run())

    await asyncio.sleep(0.5)
    alive = not task.done()
    relay.stop()
    await asyncio.wait_for(task, 2)
    await dead.aclose()

    assert alive
    assert "outbox relay" in caplog.text
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1


async def test_relay_survives_a_postgres_outage(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/downlink"
    async with open_pool(nowhere, min_size=0) as dead_pool:
        relay = OutboxRelay(dead_pool, redis, poll_interval_s=0.05, max_backoff_s=0.1)
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(0.5)
        alive = not task.done()
        relay.stop()
        await asyncio.wait_for(task, 2)

    assert alive
    assert "ConnectionRefusedError" in caplog.text


async def test_purge_forgets_old_sent_rows_only(pool: asyncpg.Pool, redis: Redis) -> None:
    for _ in range(3):
        await _add(pool, "s:p", b"{}", {})
    await pool.execute("UPDATE outbox SET sent_at = now() - interval '2 days' WHERE id = 1")
    await pool.execute("UPDATE outbox SET sent_at = now() WHERE id = 2")
    await pool.execute(
        "INSERT INTO processed_events (event_id, processed_at) VALUES"
        " (gen_random_uuid(), now() - interval '30 days'), (gen_random_uuid(), now())"
    )
    await purge_sent(pool, outbox_age_s=86_400, events_age_s=7 * 86_400)

    assert [r["id"] for r in await pool.fetch("SELECT id FROM outbox ORDER BY id")] == [2, 3]
    assert await pool.fetchval("SELECT count(*) FROM processed_events") == 1


async def test_a_download_command_and_its_live_marker_go_out_in_one_transaction(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    _job, files = await submit_job(pool, await user_id(pool, "alice"), files=2)
    await _add(pool, EVENTS_STREAM, b"{}", {})  # an event: no file, no marker
    relay = OutboxRelay(pool, redis, live_ttl_s=3600)
    async with redis.monitor() as monitor:
        assert await relay.relay_once() == 3
        names: list[list[str]] = []
        while not names or names[-1] != ["EXEC"]:
            command = (await asyncio.wait_for(monitor.next_command(), 2))["command"]
            # Connection set-up (HELLO, SELECT, CLIENT) is not part of the batch.
            if command.split(" ", 1)[0] in {"MULTI", "XADD", "SET", "EXEC"}:
                names.append(command.split(" ", 2)[:2])

    lane = download_stream(lane_for(5))
    # MULTI, then per row its XADD (and the marker right after a command's), then EXEC.
    assert names[0] == ["MULTI"]
    assert names[1:6] == [
        ["XADD", lane],
        ["SET", live_key(files[0])],
        ["XADD", lane],
        ["SET", live_key(files[1])],
        ["XADD", EVENTS_STREAM],
    ]
    assert names[6] == ["EXEC"]
    for file_id in files:
        assert await redis.get(live_key(file_id)) == b"1"
        assert 3500 < await redis.ttl(live_key(file_id)) <= 3600
    assert await redis.xlen(lane) == 2
    # The submit recorded which file each command is for.
    rows = await pool.fetch("SELECT file_id FROM outbox WHERE file_id IS NOT NULL ORDER BY id")
    assert [str(row["file_id"]) for row in rows] == files
