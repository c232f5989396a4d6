"""Download jobs through the client: submit, follow the job's events with a progress callback,
export a zip and check its members against the served bytes."""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import pytest

import downlink

if TYPE_CHECKING:
    from pathlib import Path

    from downlink.client.models import JobProgress
    from tests.integration.conftest import PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

KIB = 1024


async def test_a_job_is_followed_to_its_end_and_exported_as_a_zip(
    pipeline_factory: PipelineFactory,
    file_server: FileServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One file at a time, each taking a few tenths of a second: progress moves in steps.
    stack = pipeline_factory(DOWNLINK_PER_HOST_CONCURRENCY="1")
    stack.start_downloader()
    stack.start_exporter()
    served = {}
    urls = []
    for index in range(5):
        url, digest = file_server.add_file(f"scene-{index}.tif", size=(index + 1) * 24 * KIB)
        served[f"scene-{index}.tif"] = digest
        urls.append(f"{url}?rate={120 * KIB}")
    seen: list[JobProgress] = []
    caplog.set_level(logging.INFO, logger="downlink.client")
    async with downlink.Client(stack.url, stack.token("alice")) as dl:
        job = await dl.download(urls, priority=8, metadata={"scene": "S2A"})
        assert job.submitted is not None
        assert job.submitted.status == "pending"
        ended = await job.wait(progress=seen.append, timeout=60)
        result = await job.result()
    assert ended.status == "completed"
    # Called as the counts move (bytes included), never backwards.
    assert [p.done for p in seen] == sorted(p.done for p in seen), seen
    assert [p.bytes_downloaded for p in seen] == sorted(p.bytes_downloaded for p in seen), seen
    assert len({p.done for p in seen}) >= 3, seen
    assert (seen[-1].done, seen[-1].total) == (5, 5)
    assert seen[-1].bytes_downloaded == sum((i + 1) * 24 * KIB for i in range(5))
    assert not [r for r in caplog.records if "polling" in r.getMessage()], caplog.text
    assert {f.filename: f.hash for f in result.results} == served
    assert result.summary.successful == 5

    with downlink.SyncClient(stack.url, stack.token("alice")) as sync:
        saved = sync.job(job.job_id).export("zip", tmp_path / "scenes.zip", timeout=60)
    assert saved == tmp_path / "scenes.zip"
    assert not (tmp_path / "scenes.zip.part").exists()
    with zipfile.ZipFile(saved) as archive:
        members = {
            PurePosixPath(name).name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in archive.namelist()
            if PurePosixPath(name).name in served
        }
    assert members == served


def test_errors_carry_the_gateways_message(pipeline_factory: PipelineFactory) -> None:
    stack = pipeline_factory()
    with downlink.SyncClient(stack.url, stack.token("alice")) as dl:
        with pytest.raises(downlink.Invalid) as no_urls:
            dl.download([])
        with pytest.raises(downlink.NotFound, match="not found"):
            dl.job("00000000-0000-0000-0000-000000000000").status()
    assert no_urls.value.status in (400, 422)
    assert no_urls.value.field == "urls"
    with (
        downlink.SyncClient(stack.url, "dl_not-a-token") as stranger,
        pytest.raises(downlink.Unauthorized, match="invalid or revoked token"),
    ):
        stranger.tasks()
    closed = stack.url.rsplit(":", 1)[0] + ":9"
    with (
        downlink.SyncClient(closed, "dl_x") as nowhere,
        pytest.raises(downlink.ConnectionFailed, match=f"cannot reach {closed}/api/v1/tasks"),
    ):
        nowhere.tasks()
