"""Segmented downloads and the fleet-wide host budget over real downloader processes."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.file_server import FileServer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import httpx

    from tests.integration.conftest import PipelineFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIB = 1024 * 1024
FAST = {
    "DOWNLINK_CLAIM_IDLE": "3",
    "DOWNLINK_RETRY_BACKOFF": "0.5",
    "DOWNLINK_RECONCILE_INTERVAL": "1",
    "DOWNLINK_HOST_SLOT_LEASE": "2",
}


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[FileServer]:
    """A server that caps each connection at 4 MiB/s, as Copernicus caps its at 20 MB/s."""
    with FileServer(tmp_path / "capped", rate_per_connection=4 * MIB) as server:
        yield server


def _submit(client: httpx.Client, urls: list[str]) -> str:
    response = client.post("/api/v1/downloads/download", json={"urls": urls})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(client: httpx.Client, job_id: str) -> dict[str, Any]:
    progress: dict[str, Any] = client.get(f"/api/v1/downloads/jobs/{job_id}").json()["progress"]
    return progress


def test_two_downloaders_share_one_per_host_budget(
    pipeline_factory: PipelineFactory, capped_server: FileServer
) -> None:
    # Three files at a time per process, so both take some; two connections to the host in all.
    stack = pipeline_factory(
        **FAST,
        DOWNLINK_DOWNLOAD_CONCURRENCY="3",
        DOWNLINK_PER_HOST_CONCURRENCY="2",
        DOWNLINK_SEGMENT_THRESHOLD=str(4 * MIB),
    )
    stack.start_downloader()
    stack.start_downloader()
    alice = stack.client("alice")
    urls = [capped_server.add_file(f"f{i}.bin", size=MIB)[0] for i in range(8)]
    big_url, big_sha = capped_server.add_file("big.bin", size=8 * MIB)  # four segments
    job_id = _submit(alice, [*urls, big_url])

    status = stack.wait_job(alice, job_id, timeout=90)

    assert status["status"] == "completed"
    by_url = {r["url"]: r for r in stack.result(alice, job_id)["results"]}
    assert by_url[big_url]["hash"] == big_sha
    # Each process alone would allow 2; both together still hold 2 at the server.
    assert capped_server.peak_in_flight == 2
    assert len(capped_server.requests_for("/files/big.bin")) == 4
    assert all("downloaded" in process.log_text() for process in stack.downloaders)


def test_a_killed_segmented_download_resumes_every_segment(
    pipeline_factory: PipelineFactory, capped_server: FileServer
) -> None:
    stack = pipeline_factory(**FAST, DOWNLINK_SEGMENT_THRESHOLD=str(16 * MIB))
    first = stack.start_downloader()
    alice = stack.client("alice")
    size = 64 * MIB  # four segments of 16 MiB, 4 s each at 4 MiB/s
    url, digest = capped_server.add_file("scene.tif", size=size)
    job_id = _submit(alice, [url])
    deadline = time.monotonic() + 30
    while _progress(alice, job_id)["bytes_downloaded"] < 16 * MIB:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    first.kill()
    killed_at = time.monotonic()
    stack.start_downloader()

    status = stack.wait_job(alice, job_id, timeout=90)

    assert status["status"] == "completed"
    item = stack.result(alice, job_id)["results"][0]
    assert (item["hash"], item["size"]) == (digest, size)
    assert _sha256(stack.storage_root / item["filepath"]) == digest
    after = [r for r in capped_server.requests_for("/files/scene.tif") if r.started > killed_at]
    starts = sorted(
        int((r.range or "bytes=0-").removeprefix("bytes=").partition("-")[0]) for r in after
    )
    # One request per segment, each from past where that segment starts.
    assert [start // (16 * MIB) for start in starts] == [0, 1, 2, 3]
    assert all(start % (16 * MIB) > 0 for start in starts)
    assert all(r.if_range is not None and r.status == 206 for r in after)
    assert sum(r.bytes_sent for r in after) < size - 12 * MIB
