"""Redis loses everything while work is queued past the downloads: the reconciler brings it back.

Each test flushes the test's Redis database while a command that PostgreSQL knows to be
unfinished waits in Redis for a worker that is not running yet, then starts that worker: the
work completes, and nothing that had completed before the flush runs again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import redis

from shared.streams import EXPORT_STREAM, PROCESS_LANES
from tests.exporter.archives import check_sums, extract, same_bytes, sha256_file
from tests.processor.imagery import write_sentinel_bands

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from tests.integration.conftest import PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIB = 1024 * 1024
# The reconciler runs every second, so a loss is noticed in seconds, not at the default 10 s.
FAST = {
    "DOWNLINK_CLAIM_IDLE": "3",
    "DOWNLINK_RETRY_BACKOFF": "0.5",
    "DOWNLINK_RECONCILE_INTERVAL": "1",
    "DOWNLINK_SHUTDOWN_GRACE": "5",
}
BANDS = ("B02.tif", "B03.tif", "B04.tif", "B08.tif")


def _wait_until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def _queued(redis_url: str, streams: tuple[str, ...]) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return sum(int(client.xlen(stream)) for stream in streams)


def _flush(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()  # FLUSHALL, limited to this test's database


def _runs(client: httpx.Client, **params: str) -> Counter[tuple[str, str]]:
    """How many tries of each (task, subject) the execution history holds."""
    response = client.get("/api/v1/executions", params={"per_page": "100", **params})
    assert response.status_code == 200, response.text
    return Counter((run["task"], run["subject_id"]) for run in response.json()["executions"])


def _downloads_per_file(file_server: FileServer) -> Counter[str]:
    return Counter(record.path.rsplit("/", 1)[-1] for record in file_server.requests)


def test_processing_queued_before_a_flush_completes_once(
    pipeline_factory: PipelineFactory, file_server: FileServer, redis_url: str
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()  # no processor yet: the processing commands wait in Redis
    alice = stack.client("alice")
    write_sentinel_bands(file_server.root)
    urls = [file_server.file_url(name) for name in BANDS]
    response = alice.post(
        "/api/v1/downloads/download", json={"urls": urls, "process": ["metadata"]}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    def processing_queued() -> bool:
        progress: dict[str, Any] = alice.get(f"/api/v1/downloads/jobs/{job_id}").json()["progress"]
        queued: int = progress["processing"]["files_total"]
        return progress["completed"] == len(BANDS) and queued == len(BANDS)

    _wait_until(processing_queued, 30, "every file downloaded and its processing queued")
    _wait_until(lambda: _queued(redis_url, PROCESS_LANES) == 4, 10, "the ProcessFile commands")
    _flush(redis_url)
    stack.start_processor("--concurrency", "2")
    status = stack.wait_job(alice, job_id, timeout=60)

    assert status["status"] == "completed", status
    assert status["progress"]["processing"]["files_completed"] == 4
    assert status["progress"]["processing"]["files_failed"] == 0
    results = stack.result(alice, job_id)["results"]
    assert {item["filename"] for item in results} == set(BANDS)
    for item in results:
        assert item["artifacts"]["status"] == "completed"
        assert item["artifacts"]["metadata"]["crs"] == "EPSG:32633"
    # Nothing ran twice: each file was fetched once, downloaded once and processed once.
    assert _downloads_per_file(file_server) == dict.fromkeys(BANDS, 1)
    runs = _runs(alice, job_id=job_id)
    assert sorted(runs.values()) == [1] * 8
    assert Counter(task for task, _subject in runs) == {"download": 4, "process": 4}


def test_an_export_accepted_before_a_flush_becomes_ready_once(
    pipeline_factory: PipelineFactory, file_server: FileServer, redis_url: str, tmp_path: Path
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()  # no exporter yet: the BuildExport command waits in Redis
    alice = stack.client("alice")
    names = [f"scene-{n}.tif" for n in range(5)]
    urls = [file_server.add_file(name, size=(n + 1) * 64 * 1024)[0] for n, name in enumerate(names)]
    response = alice.post("/api/v1/downloads/download", json={"urls": urls})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert stack.wait_job(alice, job_id)["status"] == "completed"
    response = alice.post("/api/v1/downloads/export", json={"job_ids": [job_id]})
    assert response.status_code == 202, response.text
    export_id = response.json()["export_id"]

    _wait_until(lambda: _queued(redis_url, (EXPORT_STREAM,)) == 1, 10, "the BuildExport command")
    _flush(redis_url)
    stack.start_exporter()

    def ended() -> dict[str, Any] | None:
        body: dict[str, Any] = alice.get(f"/api/v1/downloads/exports/{export_id}").json()
        return body if body["status"] in {"ready", "failed", "cancelled"} else None

    status = _wait_until(ended, 60, f"export {export_id} to end")
    assert status["status"] == "ready", status
    assert status["file_count"] == len(names)
    archive = tmp_path / "export.zip"
    download = alice.get(status["download_url"])
    assert download.status_code == 200
    archive.write_bytes(download.content)
    assert sha256_file(archive) == status["hash"]
    out = extract(archive, tmp_path / "out", "zip")
    result = stack.result(alice, job_id)
    for item in result["results"]:
        assert same_bytes(out / job_id / item["filename"], stack.storage_root / item["filepath"])
    assert len(check_sums(out)) == len(names) + 2  # the files, the manifest, the STAC items
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(f["file_id"] for f in manifest["files"]) == sorted(
        item["file_id"] for item in result["results"]
    )
    # Nothing ran twice: the downloads were not redone, and the archive was built once.
    assert _downloads_per_file(file_server) == dict.fromkeys(names, 1)
    assert _runs(alice)[("export", export_id)] == 1
