"""A download job end to end over real processes: gateway → Redis → downloader → PostgreSQL."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

KIB = 1024
MIB = 1024 * KIB


def _sha256(path: object) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:  # type: ignore[call-overload]
        while chunk := source.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _mixed_sizes(count: int) -> list[int]:
    # Geometric spread from 1 KiB to 50 MiB, so small-file overhead and big-file streaming count.
    ratio = (50 * MIB / KIB) ** (1 / (count - 1))
    return [round(KIB * ratio**i) for i in range(count)]


@pytest.mark.slow
def test_fifty_files_arrive_byte_for_byte(
    pipeline: Pipeline, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline.start_downloader(DOWNLINK_PER_HOST_CONCURRENCY="8")
    alice = pipeline.client("alice")
    sources = {}
    for index, size in enumerate(_mixed_sizes(50)):
        url, digest = file_server.add_file(f"scene-{index:02d}.tif", size=size)
        sources[url] = (digest, size)

    started = time.monotonic()
    response = alice.post("/api/v1/downloads/download", json={"urls": list(sources)})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    status = pipeline.wait_job(alice, job_id, timeout=240)
    elapsed = time.monotonic() - started

    assert status["status"] == "completed"
    assert status["progress"]["completed"] == 50
    result = pipeline.result(alice, job_id)
    assert result["summary"] == {
        "total_requested": 50,
        "successful": 50,
        "failed": 0,
        "total_size": sum(size for _, size in sources.values()),
    }
    assert len({item["filename"] for item in result["results"]}) == 50
    for item in result["results"]:
        digest, size = sources[item["url"]]
        assert item["status"] == "completed"
        assert (item["hash"], item["size"]) == (digest, size)
        assert _sha256(pipeline.storage_root / item["filepath"]) == digest
    # The bytes also come back through the API, whole and by range.
    smallest = min(result["results"], key=lambda item: item["size"])
    body = alice.get(f"/api/v1/downloads/files/{smallest['file_id']}")
    assert hashlib.sha256(body.content).hexdigest() == smallest["hash"]
    total_mb = sum(size for _, size in sources.values()) / 1e6
    with capsys.disabled():
        print(
            f"\n50-file job: {elapsed:.2f} s, {50 / elapsed:.1f} files/s, "
            f"{total_mb / elapsed:.1f} MB/s ({total_mb:.0f} MB)"
        )


def test_failed_urls_fail_alone_and_the_job_is_partial(
    pipeline: Pipeline, file_server: FileServer
) -> None:
    # The guard is on; only 127.0.0.1 is allowed, so 127.0.0.2 (loopback too) stands for a
    # refused internal address without any traffic leaving the machine.
    pipeline.start_downloader(
        DOWNLINK_ALLOW_PRIVATE_NETWORKS="false", DOWNLINK_ALLOWED_NETWORKS="127.0.0.1/32"
    )
    alice = pipeline.client("alice")
    good = [file_server.add_file(f"ok-{i}.bin", size=64 * KIB)[0] for i in range(3)]
    missing = file_server.status_url(404)
    blocked = file_server.file_url("ok-0.bin").replace("127.0.0.1", "127.0.0.2")

    job = alice.post("/api/v1/downloads/download", json={"urls": [*good, missing, blocked]})
    assert job.status_code == 202, job.text
    status = pipeline.wait_job(alice, job.json()["job_id"])

    assert status["status"] == "partial"
    assert (status["progress"]["completed"], status["progress"]["failed"]) == (3, 2)
    by_url = {item["url"]: item for item in pipeline.result(alice, status["job_id"])["results"]}
    assert by_url[missing]["status"] == "failed"
    assert "404" in by_url[missing]["error"]
    assert by_url[blocked]["status"] == "failed"
    assert "blocked address 127.0.0.2" in by_url[blocked]["error"]
    assert not [
        r for r in file_server.requests if r.headers.get("Host", "").startswith("127.0.0.2")
    ]
    assert all(by_url[url]["status"] == "completed" for url in good)


def test_cancel_stops_slow_downloads_within_a_second(
    pipeline: Pipeline, file_server: FileServer
) -> None:
    pipeline.start_downloader()
    alice = pipeline.client("alice")
    urls = []
    for i in range(3):
        file_server.add_file(f"slow-{i}.bin", size=20 * MIB)
        urls.append(file_server.file_url(f"slow-{i}.bin", rate=200 * KIB))
    job_id = alice.post("/api/v1/downloads/download", json={"urls": urls}).json()["job_id"]

    deadline = time.monotonic() + 20
    while alice.get(f"/api/v1/downloads/jobs/{job_id}").json()["progress"]["bytes_downloaded"] == 0:
        assert time.monotonic() < deadline, "downloads never started"
        time.sleep(0.1)
    cancelled_at = time.monotonic()
    response = alice.post(f"/api/v1/downloads/jobs/{job_id}/cancel", json={"reason": "test"})
    assert response.status_code == 200, response.text
    assert response.json() == {"job_id": job_id, "status": "cancelled"}

    started = [r for r in file_server.requests if r.path.startswith("/files/slow-")]
    assert started
    for record in started:
        while not record.done:
            assert time.monotonic() - cancelled_at < 1.0, "a download outlived its cancel by 1 s"
            time.sleep(0.01)
    assert alice.get(f"/api/v1/downloads/jobs/{job_id}").json()["status"] == "cancelled"
    assert alice.post(f"/api/v1/downloads/jobs/{job_id}/cancel", json={}).status_code == 409
    time.sleep(0.5)  # let the downloader remove its parts
    parts = pipeline.storage_root / ".parts"
    assert not parts.exists() or not any(parts.iterdir())
    assert not list(pipeline.storage_root.glob("*/*/slow-*"))


def test_a_high_priority_job_overtakes_a_low_priority_backlog(
    pipeline: Pipeline, file_server: FileServer
) -> None:
    pipeline.start_downloader(DOWNLINK_DOWNLOAD_CONCURRENCY="1")
    alice = pipeline.client("alice")
    file_server.add_file("tile.bin", size=32 * KIB)
    backlog = [file_server.file_url("tile.bin", rate=160 * KIB, n=i) for i in range(30)]
    low = alice.post("/api/v1/downloads/download", json={"urls": backlog, "priority": 1}).json()
    time.sleep(0.5)  # the backlog is queued and the downloader is busy with it
    urgent_url = file_server.file_url("tile.bin", urgent=1)
    high = alice.post("/api/v1/downloads/download", json={"urls": [urgent_url], "priority": 10})
    assert high.status_code == 202, high.text

    pipeline.wait_job(alice, high.json()["job_id"], timeout=30)
    backlog_status = alice.get(f"/api/v1/downloads/jobs/{low['job_id']}").json()
    # One backlog file may have been in flight, plus the one read with it; not 30.
    assert backlog_status["progress"]["completed"] <= 5, backlog_status
    assert backlog_status["status"] == "in_progress"


def test_another_users_job_result_and_file_are_404(
    pipeline: Pipeline, file_server: FileServer
) -> None:
    pipeline.start_downloader()
    alice, bob = pipeline.client("alice"), pipeline.client("bob")
    url, _ = file_server.add_file("mine.bin", size=KIB)
    job_id = alice.post("/api/v1/downloads/download", json={"urls": [url]}).json()["job_id"]
    pipeline.wait_job(alice, job_id)
    file_id = pipeline.result(alice, job_id)["results"][0]["file_id"]

    for path in (
        f"/api/v1/downloads/jobs/{job_id}",
        f"/api/v1/downloads/jobs/{job_id}/result",
        f"/api/v1/downloads/files/{file_id}",
    ):
        assert bob.get(path).status_code == 404, path
        assert alice.get(path).status_code == 200, path
    assert bob.post(f"/api/v1/downloads/jobs/{job_id}/cancel", json={}).status_code == 404
    assert bob.get("/api/v1/downloads/jobs").json()["total"] == 0
    assert pipeline.client("alice").get("/api/v1/downloads/jobs").json()["total"] == 1


GOOD = "http://127.0.0.1:9/files/a.bin"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"urls": [GOOD], "priority": 0}, "priority"),
        ({"urls": [GOOD], "priority": 11}, "priority"),
        ({"urls": []}, "urls"),
        ({"urls": [GOOD] * 10_001}, "urls"),
        ({"urls": ["ftp://127.0.0.1/a.bin"]}, "urls"),
        ({"urls": ["file:///etc/passwd"]}, "urls"),
        ({"urls": [GOOD], "colour": "blue"}, "colour"),
        ({"files": [{"url": GOOD, "sha256": "xyz"}]}, "sha256"),
        (b'{"urls": ["http://127.0.0.1/a"', "body"),
    ],
    ids=["priority-0", "priority-11", "empty", "too-many", "ftp", "file", "unknown", "sha", "json"],
)
def test_bad_bodies_answer_4xx_naming_the_field_and_create_nothing(
    pipeline: Pipeline, body: object, field: str
) -> None:
    alice = pipeline.client("alice")
    if isinstance(body, bytes):
        response = alice.post(
            "/api/v1/downloads/download",
            content=body,
            headers={"Content-Type": "application/json"},
        )
    else:
        response = alice.post("/api/v1/downloads/download", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert field in response.text.lower() if field != "body" else response.status_code == 400
    assert alice.get("/api/v1/downloads/jobs").json()["total"] == 0
