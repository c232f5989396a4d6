"""docs/client.md's examples, run as a user runs them: a script against a real stack."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.tasks.conftest import ROOT, STACK_ENV, start_worker

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

EXAMPLES = ("client_quickstart.py", "client_download.py")


def run_example(name: str, *argv: str, stack: Pipeline) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DOWNLINK_URL": stack.url,
        "DOWNLINK_TOKEN": stack.token("alice"),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_the_docs_show_the_examples_as_they_are() -> None:
    docs = (ROOT / "docs" / "client.md").read_text()
    for name in EXAMPLES:
        assert (ROOT / "examples" / name).read_text() in docs, f"docs/client.md: update {name}"


def test_the_quickstart_makes_a_thumbnail(
    pipeline_factory: PipelineFactory, tmp_path: Path
) -> None:
    stack = pipeline_factory(**STACK_ENV)
    start_worker(stack, "--tasks", "examples.imageboard.tasks")
    source, target = tmp_path / "photo.png", tmp_path / "thumb.jpg"
    Image.new("RGB", (1200, 600), (30, 120, 200)).save(source)
    made = run_example("client_quickstart.py", str(source), str(target), stack=stack)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "queued " in made.stdout
    assert f"made {target}: 250x200" in made.stdout
    with Image.open(target) as thumbnail:
        assert thumbnail.size == (250, 200)
    missing = run_example("client_quickstart.py", str(tmp_path / "gone.png"), "x", stack=stack)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert f"failed: Permanent: no image at {tmp_path / 'gone.png'}" in missing.stdout


def test_the_download_example_saves_a_zip(
    pipeline_factory: PipelineFactory, file_server: FileServer, tmp_path: Path
) -> None:
    stack = pipeline_factory()
    stack.start_downloader()
    stack.start_exporter()
    urls = [file_server.add_file(f"band-{n}.tif", size=(n + 1) * 1000)[0] for n in range(2)]
    archive = tmp_path / "scenes.zip"
    ran = run_example("client_download.py", str(archive), *urls, stack=stack)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2/2 files, 3000 bytes" in ran.stdout
    assert f"saved {archive}" in ran.stdout
    with zipfile.ZipFile(archive) as saved:
        assert {"band-0.tif", "band-1.tif"} <= {
            name.rsplit("/", 1)[-1] for name in saved.namelist()
        }
