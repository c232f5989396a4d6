"""Exports end to end over real processes: gateway → outbox → Redis → exporter → storage → HTTP.

Archives are fetched over the API and checked as a person would: `unzip`, `tar`, `sha256sum -c`,
and the STAC ItemCollection validated offline with pystac.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from shared.streams import EXPORT_STREAM
from tests.exporter.archives import check_sums, extract, need_tools, same_bytes, sha256_file
from tests.exporter.stac_validation import validate_item_collection

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

KIB = 1024
MIB = 1024 * KIB
# Reclaim a dead exporter's command after 3 s idle, so a crash is recovered in seconds.
FAST = {
    "DOWNLINK_CLAIM_IDLE": "3",
    "DOWNLINK_RETRY_BACKOFF": "0.5",
    "DOWNLINK_SHUTDOWN_GRACE": "5",
}
FINAL_EXPORT = {"ready", "failed", "cancelled"}


def _submit(client: httpx.Client, urls: list[str], **extra: Any) -> str:
    response = client.post("/api/v1/downloads/download", json={"urls": urls, **extra})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _export(client: httpx.Client, **body: Any) -> str:
    response = client.post("/api/v1/downloads/export", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    export_id: str = response.json()["export_id"]
    return export_id


def _status(client: httpx.Client, export_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/downloads/exports/{export_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


def _wait_export(client: httpx.Client, export_id: str, timeout: float = 60) -> dict[str, Any]:
    status: dict[str, Any] = _wait_until(
        lambda: (s := _status(client, export_id))["status"] in FINAL_EXPORT and s,
        timeout,
        f"export {export_id} to end",
    )
    return status


def _fetch(client: httpx.Client, url: str, destination: Path) -> Path:
    with client.stream("GET", url) as response, destination.open("wb") as out:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes(MIB):
            out.write(chunk)
    return destination


def _thirty_files(file_server: FileServer) -> list[str]:
    urls = []
    for index in range(30):
        if index % 3 == 2:  # text: deflated in a zip
            line = f"{index},{index * 3},{index * 7},10.5,46.2\n".encode()
            url, _ = file_server.add_file(f"table-{index:02d}.csv", data=line * (2000 + index))
        else:  # imagery: stored as is in a zip
            suffix = ".tif" if index % 3 == 0 else ".jp2"
            url, _ = file_server.add_file(f"scene-{index:02d}{suffix}", size=(index + 1) * 37 * KIB)
        urls.append(url)
    return urls


def _check_archive(
    stack: Pipeline, archive: Path, archive_format: str, result: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Extract with the system tools and check every byte, the sums, the manifest and STAC."""
    extract(archive, out, archive_format)
    stored = [item for item in result["results"] if item["status"] == "completed"]
    for item in stored:
        inside = out / result["job_id"] / item["filename"]
        assert same_bytes(inside, stack.storage_root / item["filepath"]), item["filename"]
        assert sha256_file(inside) == item["hash"]
    assert len(check_sums(out)) == len(stored) + 2
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    assert sorted(f["file_id"] for f in manifest["files"]) == sorted(i["file_id"] for i in stored)
    assert {f["url"] for f in manifest["files"]} == {i["url"] for i in stored}
    assert [job["job_id"] for job in manifest["jobs"]] == [result["job_id"]]
    items = validate_item_collection(json.loads((out / "stac-items.json").read_text()))
    assert sorted(item.id for item in items) == sorted(i["file_id"] for i in stored)
    for item in items:
        assert (out / item.assets["data"].href).is_file()
    return manifest


@pytest.mark.slow
def test_thirty_files_export_as_zip_and_tar_gz_and_check_out(
    pipeline_factory: PipelineFactory, file_server: FileServer, tmp_path: Path
) -> None:
    need_tools("unzip", "tar", "sha256sum")
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    stack.start_exporter()
    alice = stack.client("alice")
    job_id = _submit(alice, _thirty_files(file_server))
    assert stack.wait_job(alice, job_id, timeout=120)["status"] == "completed"
    result = stack.result(alice, job_id)

    by_job = _export(alice, job_ids=[job_id], export_format="zip", include_metadata=True)
    by_ids = _export(
        alice,
        file_ids=[item["file_id"] for item in result["results"]],
        export_format="tar.gz",
    )
    for export_id, archive_format in ((by_job, "zip"), (by_ids, "tar.gz")):
        status = _wait_export(alice, export_id)
        assert status["status"] == "ready", status
        assert status["format"] == archive_format
        assert status["file_count"] == 30
        assert status["progress"]["percentage"] == 100.0
        archive = _fetch(alice, status["download_url"], tmp_path / f"{export_id}.{archive_format}")
        assert archive.stat().st_size == status["size"]
        assert sha256_file(archive) == status["hash"]
        _check_archive(stack, archive, archive_format, result, tmp_path / export_id)
        head = alice.get(status["download_url"], headers={"Range": "bytes=0-99"})
        assert head.status_code == 206
        assert head.content == archive.read_bytes()[:100]
    assert not list((stack.storage_root / ".parts").glob("export-*"))


def test_paths_outside_the_users_files_are_refused_over_http(
    pipeline_factory: PipelineFactory, file_server: FileServer, redis_url: str
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    alice, bob = stack.client("alice"), stack.client("bob")
    url, _ = file_server.add_file("a.tif", size=10 * KIB)
    alice_job = _submit(alice, [url])
    bob_job = _submit(bob, [url])
    stack.wait_job(alice, alice_job)
    stack.wait_job(bob, bob_job)
    mine = stack.result(alice, alice_job)["results"][0]
    theirs = stack.result(bob, bob_job)["results"][0]
    link = stack.storage_root / mine["filepath"].rsplit("/", 1)[0] / "link.tif"
    link.symlink_to(stack.storage_root / theirs["filepath"])

    attempts = {
        "..": {"file_paths": [f"{mine['filepath']}/../../../{theirs['filepath']}"]},
        "absolute": {"file_paths": ["/etc/passwd"]},
        "absolute in bob's area": {"file_paths": [str(stack.storage_root / theirs["filepath"])]},
        "bob's path": {"file_paths": [theirs["filepath"]]},
        "bob's job": {"job_ids": [bob_job]},
        "bob's file": {"file_ids": [theirs["file_id"]]},
        "symlink": {"file_paths": [str(link.relative_to(stack.storage_root))]},
    }
    answers = {
        name: alice.post("/api/v1/downloads/export", json=body).status_code
        for name, body in attempts.items()
    }

    assert answers == {
        "..": 400,
        "absolute": 403,
        "absolute in bob's area": 403,
        "bob's path": 404,
        "bob's job": 404,
        "bob's file": 404,
        "symlink": 403,
    }
    with redis.Redis.from_url(redis_url) as client:
        assert client.xlen(EXPORT_STREAM) == 0  # nothing was queued
    assert not list(stack.storage_root.glob("*/exports"))


@pytest.mark.slow
def test_an_exporter_killed_mid_archive_leaves_no_half_archive_and_another_finishes(
    pipeline_factory: PipelineFactory,
    file_server: FileServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    need_tools("unzip", "sha256sum")
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    first = stack.start_exporter()
    alice = stack.client("alice")
    # Noise named .bin is deflated, slowly: the archive takes seconds, long enough to kill it.
    urls = [file_server.add_file(f"noise-{n}.bin", size=40 * MIB)[0] for n in range(6)]
    job_id = _submit(alice, urls)
    assert stack.wait_job(alice, job_id, timeout=120)["status"] == "completed"
    result = stack.result(alice, job_id)
    export_id = _export(alice, job_ids=[job_id], export_format="zip")
    user_id = result["results"][0]["filepath"].split("/", 1)[0]
    final = stack.storage_root / user_id / "exports" / f"{export_id}.zip"
    part = stack.storage_root / ".parts" / f"export-{export_id}"

    building = _wait_until(
        lambda: (s := _status(alice, export_id))["progress"]["bytes_done"] > 30 * MIB and s,
        60,
        "the archive to be well under way",
    )
    assert building["status"] == "building"
    assert part.stat().st_size > 0
    assert not final.exists()
    first.kill()
    killed_at = time.monotonic()
    time.sleep(1.0)
    assert not final.exists(), "a killed exporter left an archive under the final key"
    assert _status(alice, export_id)["status"] == "building"

    second = stack.start_exporter()
    status = _wait_export(alice, export_id, timeout=120)
    recovered_s = time.monotonic() - killed_at

    assert status["status"] == "ready", status
    assert "reclaimed" in second.log_text()
    assert not part.exists()
    assert final.stat().st_size == status["size"]
    archive = _fetch(alice, status["download_url"], tmp_path / "recovered.zip")
    assert sha256_file(archive) == status["hash"]
    _check_archive(stack, archive, "zip", result, tmp_path / "out")
    with capsys.disabled():
        print(
            f"\nexport recovery: killed at {building['progress']['bytes_done'] / MIB:.0f} MiB "
            f"of {building['total_bytes'] / MIB:.0f} MiB; ready {recovered_s:.1f} s later on a "
            "second exporter (CLAIM_IDLE=3)"
        )


def test_a_cancelled_export_stops_and_leaves_nothing(
    pipeline_factory: PipelineFactory, file_server: FileServer
) -> None:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    exporter = stack.start_exporter()
    alice = stack.client("alice")
    urls = [file_server.add_file(f"noise-{n}.bin", size=30 * MIB)[0] for n in range(3)]
    job_id = _submit(alice, urls)
    stack.wait_job(alice, job_id, timeout=120)
    export_id = _export(alice, job_ids=[job_id])
    part = stack.storage_root / ".parts" / f"export-{export_id}"
    _wait_until(lambda: _status(alice, export_id)["status"] == "building", 30, "building")

    response = alice.post(f"/api/v1/downloads/exports/{export_id}/cancel", json={})

    assert response.status_code == 200, response.text
    exporter.wait_for_log(rf"export {export_id} cancelled", timeout=10)
    _wait_until(lambda: not part.exists(), 10, "the part to be removed")
    time.sleep(0.5)
    assert _status(alice, export_id)["status"] == "cancelled"
    assert not list(stack.storage_root.glob("*/exports/*"))
    assert alice.get(f"/api/v1/downloads/exports/{export_id}/download").status_code == 409


@pytest.mark.slow
def test_a_job_submitted_with_export_gets_its_archive_when_it_ends(
    pipeline_factory: PipelineFactory, file_server: FileServer, tmp_path: Path
) -> None:
    need_tools("tar", "sha256sum")
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    stack.start_exporter()
    alice = stack.client("alice")
    urls = [file_server.add_file(f"band-{n}.tif", size=(n + 1) * 100 * KIB)[0] for n in range(5)]
    urls.append(file_server.status_url(404))  # one file fails: the job is partial

    job_id = _submit(alice, urls, export={"format": "tar.gz", "include_metadata": True})
    assert stack.wait_job(alice, job_id, timeout=60)["status"] == "partial"
    result = stack.result(alice, job_id)
    assert result["export"] is not None
    export_id = result["export"]["export_id"]
    status = _wait_export(alice, export_id)

    assert status["status"] == "ready", status
    assert (status["job_id"], status["format"], status["file_count"]) == (job_id, "tar.gz", 5)
    again = stack.result(alice, job_id)["export"]
    assert again == {
        "export_id": export_id,
        "status": "ready",
        "download_url": status["download_url"],
    }
    archive = _fetch(alice, status["download_url"], tmp_path / "auto.tar.gz")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == status["hash"]
    manifest = _check_archive(stack, archive, "tar.gz", result, tmp_path / "out")
    assert manifest["format"] == "tar.gz"
    assert len(manifest["files"]) == 5


def test_the_client_submits_waits_and_saves_the_export(
    pipeline_factory: PipelineFactory, file_server: FileServer, tmp_path: Path
) -> None:
    need_tools("unzip")
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    stack.start_exporter()
    token = stack.token("carol")
    urls = [file_server.add_file(f"tile-{n}.tif", size=(n + 1) * 50 * KIB)[0] for n in range(3)]
    output = tmp_path / "carol.zip"

    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "submit", *urls, "--wait", "--export", "zip",
         "-o", str(output)],
        env={**os.environ, "DOWNLINK_API_URL": stack.url, "DOWNLINK_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"saved {output}" in done.stdout.replace("\n", "")
    out = extract(output, tmp_path / "out", "zip")
    assert len(check_sums(out)) == 3 + 2
    assert not output.with_name("carol.zip.part").exists()
