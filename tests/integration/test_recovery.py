"""Crash-proof delivery over real processes: SIGKILL, SIGTERM, retries, dead letters, outages."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from shared.streams import DEAD_STREAM, DOWNLOAD_LANES
from tests.support import postgres_server

if TYPE_CHECKING:
    import httpx

    from tests.integration.conftest import PipelineFactory
    from tests.support.file_server import FileServer, RequestRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIB = 1024 * 1024
# Fast clocks so crashes are noticed in seconds: reclaim after 3 s idle, first retry after 0.5 s.
FAST = {
    "DOWNLINK_CLAIM_IDLE": "3",
    "DOWNLINK_RETRY_BACKOFF": "0.5",
    "DOWNLINK_RECONCILE_INTERVAL": "1",
    "DOWNLINK_SHUTDOWN_GRACE": "15",
}


def _sha256(path: object) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:  # type: ignore[call-overload]
        while chunk := source.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(client: httpx.Client, job_id: str) -> dict[str, Any]:
    progress: dict[str, Any] = client.get(f"/api/v1/downloads/jobs/{job_id}").json()["progress"]
    return progress


def _wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _submit(client: httpx.Client, urls: list[str], **extra: Any) -> str:
    response = client.post("/api/v1/downloads/download", json={"urls": urls, **extra})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _file_requests(file_server: FileServer, name: str) -> list[RequestRecord]:
    return [r for r in file_server.requests if r.path.endswith(f"/{name}")]


def test_a_killed_downloaders_file_is_resumed_by_another(
    pipeline_factory: PipelineFactory, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # One connection: this is the resume of a plain stream (tests/integration/test_segments.py
    # resumes a segmented one).
    stack = pipeline_factory(**FAST, DOWNLINK_SEGMENTS="1")
    first = stack.start_downloader()
    alice = stack.client("alice")
    size = 200 * MIB
    _, digest = file_server.add_file("big.tif", size=size)
    job_id = _submit(alice, [file_server.file_url("big.tif", rate=25 * MIB)])

    _wait_until(lambda: _progress(alice, job_id)["bytes_downloaded"] > 60 * MIB, 30, "60 MiB")
    first.kill()
    killed_at = time.monotonic()
    stack.start_downloader()
    status = stack.wait_job(alice, job_id, timeout=90)

    assert status["status"] == "completed"
    result = stack.result(alice, job_id)
    assert len(result["results"]) == 1
    item = result["results"][0]
    assert (item["hash"], item["size"]) == (digest, size)
    assert _sha256(stack.storage_root / item["filepath"]) == digest
    before, after = _file_requests(file_server, "big.tif")
    # The second downloader asked only for the bytes the killed one had not stored.
    assert after.range is not None
    offset = int(after.range.removeprefix("bytes=").removesuffix("-"))
    assert 60 * MIB <= offset <= before.bytes_sent
    assert after.if_range is not None
    assert after.bytes_sent == size - offset
    reclaimed_s = after.started - killed_at
    assert reclaimed_s < 3 + 5
    with capsys.disabled():
        print(
            f"\nresume: reclaimed {reclaimed_s:.1f} s after SIGKILL (CLAIM_IDLE=3); "
            f"re-fetched {after.bytes_sent / MIB:.1f} MiB of {size / MIB:.0f} MiB "
            f"({before.bytes_sent / MIB:.1f} MiB kept from the killed attempt)"
        )


def test_retries_back_off_and_dead_letters_can_be_redriven(
    pipeline_factory: PipelineFactory, file_server: FileServer
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    alice = stack.client("alice")
    admin = stack.client("root", admin=True)
    _, flaky_digest = file_server.add_file("flaky.bin", size=MIB)
    _, broken_digest = file_server.add_file("broken.bin", size=MIB)
    flaky = file_server.flaky_url("flaky.bin", fail=2)
    broken = file_server.flaky_url("broken.bin", fail=3)
    job_id = _submit(alice, [flaky, broken])
    status = stack.wait_job(alice, job_id, timeout=60)

    assert status["status"] == "partial"
    by_url = {item["url"]: item for item in stack.result(alice, job_id)["results"]}
    assert by_url[flaky]["hash"] == flaky_digest
    starts = [r.started for r in _file_requests(file_server, "flaky.bin")]
    assert len(starts) == 3
    first_gap, second_gap = starts[1] - starts[0], starts[2] - starts[1]
    assert 0.3 < first_gap < second_gap, (first_gap, second_gap)
    assert by_url[broken]["status"] == "failed"
    assert "500" in by_url[broken]["error"]
    assert len(_file_requests(file_server, "broken.bin")) == 3  # MAX_TRIES, then no more

    assert alice.get("/api/v1/dead-letters").status_code == 403
    letters = admin.get("/api/v1/dead-letters").json()["dead_letters"]
    assert [(letter["url"], letter["attempts"]) for letter in letters] == [(broken, 3)]
    # The server is fixed (its fourth answer is a 200): re-drive the letter.
    response = admin.post(f"/api/v1/dead-letters/{letters[0]['id']}/retry")
    assert response.status_code == 202, response.text
    status = stack.wait_job(alice, job_id, timeout=30)
    assert status["status"] == "completed"
    assert (status["progress"]["completed"], status["progress"]["failed"]) == (2, 0)
    redriven = {item["url"]: item for item in stack.result(alice, job_id)["results"]}[broken]
    assert redriven["hash"] == broken_digest
    assert admin.get("/api/v1/dead-letters").json()["dead_letters"] == []


def test_a_poison_message_is_dead_lettered_once(
    pipeline_factory: PipelineFactory, file_server: FileServer, redis_url: str
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    with redis.Redis.from_url(redis_url) as client:
        client.xadd(DOWNLOAD_LANES[0], {b"__data__": b"\x89BIN not a frame at all"})
        client.xadd(DOWNLOAD_LANES[1], {b"something": b"else"})
        _wait_until(lambda: client.xlen(DEAD_STREAM) == 2, 10, "two dead letters")
        alice = stack.client("alice")
        url, _ = file_server.add_file("after.bin", size=1024)
        assert stack.wait_job(alice, _submit(alice, [url]))["status"] == "completed"
        time.sleep(4)  # past CLAIM_IDLE: a looping entry would have been reclaimed by now
        assert client.xlen(DEAD_STREAM) == 2
        for lane in DOWNLOAD_LANES:
            assert client.xpending(lane, "downloader")["pending"] == 0


def test_a_killed_gateway_restarts_and_the_job_completes_with_exact_counts(
    pipeline_factory: PipelineFactory, file_server: FileServer
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader(DOWNLINK_PER_HOST_CONCURRENCY="2")
    alice = stack.client("alice")
    file_server.add_file("tile.bin", size=256 * 1024)
    urls = [file_server.file_url("tile.bin", rate=1 * MIB, n=i) for i in range(24)]
    job_id = _submit(alice, urls)
    _wait_until(lambda: _progress(alice, job_id)["completed"] >= 4, 30, "4 files")

    assert stack.gateway is not None
    stack.gateway.kill()
    stack.gateway.wait(timeout=10)
    time.sleep(2)  # files keep finishing while no tracker runs
    stack.start_gateway()
    status = stack.wait_job(alice, job_id, timeout=60)

    assert status["status"] == "completed"
    assert (status["progress"]["completed"], status["progress"]["failed"]) == (24, 0)
    summary = stack.result(alice, job_id)["summary"]
    assert summary == {
        "total_requested": 24,
        "successful": 24,
        "failed": 0,
        "total_size": 24 * 256 * 1024,
    }


def test_a_redis_flush_mid_job_loses_nothing(
    pipeline_factory: PipelineFactory,
    file_server: FileServer,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader(DOWNLINK_PER_HOST_CONCURRENCY="2")
    alice = stack.client("alice")
    file_server.add_file("tile.bin", size=256 * 1024)
    urls = [file_server.file_url("tile.bin", rate=1 * MIB, n=i) for i in range(30)]
    job_id = _submit(alice, urls)
    _wait_until(lambda: _progress(alice, job_id)["completed"] >= 4, 30, "4 files")

    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()  # FLUSHALL, limited to this test's database
    flushed_at = time.monotonic()
    status = stack.wait_job(alice, job_id, timeout=90)
    recovered_s = time.monotonic() - flushed_at

    assert status["status"] == "completed"
    assert (status["progress"]["completed"], status["progress"]["failed"]) == (30, 0)
    results = stack.result(alice, job_id)["results"]
    assert len({item["file_id"] for item in results}) == 30
    assert all(item["size"] == 256 * 1024 for item in results)
    with capsys.disabled():
        print(f"\nflush: the job completed {recovered_s:.1f} s after FLUSHDB")


def test_a_postgres_restart_mid_job_loses_nothing(
    pipeline_factory: PipelineFactory, file_server: FileServer
) -> None:
    with postgres_server.local_postgres() as server:
        from services.gateway.migrations import migrate

        database = postgres_server.database_url(server.url, "downlink")
        postgres_server.run_async(lambda: migrate(database))
        stack = pipeline_factory(**FAST, DOWNLINK_DATABASE_URL=database)
        stack.start_downloader(DOWNLINK_PER_HOST_CONCURRENCY="2")
        alice = stack.client("alice")
        file_server.add_file("tile.bin", size=256 * 1024)
        urls = [file_server.file_url("tile.bin", rate=1 * MIB, n=i) for i in range(20)]
        job_id = _submit(alice, urls)
        _wait_until(lambda: _progress(alice, job_id)["completed"] >= 3, 30, "3 files")

        server.stop(mode="fast")
        time.sleep(3)  # downloads go on and their events wait in Redis
        server.start()
        status = stack.wait_job(alice, job_id, timeout=90)

        assert status["status"] == "completed"
        assert (status["progress"]["completed"], status["progress"]["failed"]) == (20, 0)


def test_sigterm_lets_the_file_in_flight_finish(
    pipeline_factory: PipelineFactory, file_server: FileServer
) -> None:
    stack = pipeline_factory(**FAST)
    downloader = stack.start_downloader()
    alice = stack.client("alice")
    _, digest = file_server.add_file("scene.tif", size=20 * MIB)
    job_id = _submit(alice, [file_server.file_url("scene.tif", rate=5 * MIB)])
    _wait_until(lambda: _progress(alice, job_id)["bytes_downloaded"] > 2 * MIB, 20, "2 MiB")

    downloader.terminate()
    assert downloader.wait(timeout=15) == 0
    status = stack.wait_job(alice, job_id, timeout=10)
    assert status["status"] == "completed"
    assert stack.result(alice, job_id)["results"][0]["hash"] == digest
    assert len(_file_requests(file_server, "scene.tif")) == 1


def test_leases_keep_a_long_download_and_a_dead_consumer_is_reclaimed(
    pipeline_factory: PipelineFactory, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = pipeline_factory(DOWNLINK_CLAIM_IDLE="5")
    stack.start_downloader()
    stack.start_downloader()
    alice = stack.client("alice")
    _, digest = file_server.add_file("long.tif", size=30 * MIB)
    job_id = _submit(alice, [file_server.file_url("long.tif", rate=1 * MIB)])  # ~30 s
    status = stack.wait_job(alice, job_id, timeout=60)

    assert status["status"] == "completed"
    assert len(_file_requests(file_server, "long.tif")) == 1, "a healthy download was taken over"
    assert stack.result(alice, job_id)["results"][0]["hash"] == digest

    # Now a consumer dies holding a message: a survivor takes it within CLAIM_IDLE + 5 s.
    first_downloader, second_downloader = stack.downloaders
    second_downloader.terminate()
    assert second_downloader.wait(timeout=15) == 0
    file_server.add_file("orphan.tif", size=8 * MIB)
    job_id = _submit(alice, [file_server.file_url("orphan.tif", rate=1 * MIB)])
    _wait_until(lambda: bool(_file_requests(file_server, "orphan.tif")), 10, "a first request")
    stack.start_downloader()
    first_downloader.kill()
    killed_at = time.monotonic()
    _wait_until(lambda: len(_file_requests(file_server, "orphan.tif")) == 2, 15, "a reclaim")
    reclaimed_s = _file_requests(file_server, "orphan.tif")[1].started - killed_at
    assert reclaimed_s < 5 + 5
    assert stack.wait_job(alice, job_id, timeout=30)["status"] == "completed"
    with capsys.disabled():
        print(f"\nlease: reclaimed {reclaimed_s:.1f} s after SIGKILL (CLAIM_IDLE=5)")


def test_a_job_past_its_timeout_fails_its_unfinished_files(
    pipeline_factory: PipelineFactory, file_server: FileServer
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    alice = stack.client("alice")
    quick, _ = file_server.add_file("quick.bin", size=1024)
    file_server.add_file("endless.bin", size=50 * MIB)
    endless = file_server.file_url("endless.bin", rate=256 * 1024)
    job_id = _submit(alice, [quick, endless], timeout_s=3)
    status = stack.wait_job(alice, job_id, timeout=20)

    assert status["status"] == "partial"
    by_url = {item["url"]: item for item in stack.result(alice, job_id)["results"]}
    assert by_url[quick]["status"] == "completed"
    assert by_url[endless]["status"] == "failed"
    assert "timed out" in by_url[endless]["error"]
    (request,) = _file_requests(file_server, "endless.bin")
    _wait_until(lambda: request.done, 3, "the timed-out download to be aborted")
