"""EarthGazer's pipeline end to end: a STAC API on loopback, the real gateway, downloader,
exporter and two task workers (I/O and CPU queues) on real Redis and PostgreSQL. The CPU worker
is SIGKILLed in the middle; the numbers of the temporal analysis still match numpy computed
directly on the test rasters, every artifact downloads, and the export holds them all."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from examples.earthgazer.discover import band_filename
from tests.processor.imagery import covering_window
from tests.support.sentinel import (
    AOI_BBOX,
    BANDS,
    CRS,
    HEIGHT_PX,
    MAIN_ORIGIN,
    MATCHING_IDS,
    SENTINEL_COLLECTION,
    WIDTH_PX,
)
from tests.support.stac_server import StacServer, stac_api
from tests.tasks.conftest import STACK_ENV, pipeline_factory, start_worker
from tests.tasks.test_workflows import steps_of, submit, wait_workflow

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.sentinel import Capture

__all__ = ["pipeline_factory", "stac_api"]

pytestmark = pytest.mark.integration

EARTHGAZER = ("--tasks", "examples.earthgazer.workflows")


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    stack = pipeline_factory(**STACK_ENV)
    stack.start_downloader()
    stack.start_exporter()
    start_worker(stack, *EARTHGAZER, "--queue", "earthgazer.io")
    return stack


def expected_rows(captures: list[Capture]) -> list[dict[str, float]]:
    """NDVI statistics per capture, straight from the bands written for the STAC API."""
    rows, cols = covering_window(
        tuple(AOI_BBOX), crs=CRS, origin=MAIN_ORIGIN, shape=(HEIGHT_PX, WIDTH_PX)
    )
    expected = []
    for capture in sorted(captures, key=lambda c: c.datetime):
        red = capture.arrays["B04"][rows, cols].astype(np.float64)
        nir = capture.arrays["B08"][rows, cols].astype(np.float64)
        valid = (red != 0) & (nir != 0) & (red + nir != 0)
        # The NDVI raster is float32: its statistics are of the values as stored.
        ndvi = ((nir[valid] - red[valid]) / (nir[valid] + red[valid])).astype(np.float32)
        ndvi = ndvi.astype(np.float64)
        expected.append(
            {
                "mean": float(ndvi.mean()),
                "min": float(ndvi.min()),
                "max": float(ndvi.max()),
                "std": float(ndvi.std()),
                "valid_share": float(valid.sum() / valid.size),
            }
        )
    return expected


def band_folder(root: Path, capture: Capture) -> Path:
    """The capture's bands as a backup holds them: `<folder>/<capture>_<band>.tif`."""
    folder = root / capture.id
    folder.mkdir()
    for band, path in capture.paths.items():
        shutil.copyfile(path, folder / band_filename(capture.id, band))
    return folder


def wait_until(found: Any, what: str, timeout: float = 60, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(poll_s)


def stack_step_launched(client: httpx.Client, workflow_id: str) -> bool:
    """Whether a stack step's task is queued or running: the CPU worker has work in hand."""
    steps = steps_of(client.get(f"/api/v1/workflows/{workflow_id}").json())
    return any(
        key.rsplit("/", 1)[-1].startswith("stack-") and step["status"] in ("pending", "running")
        for key, step in steps.items()
    )


def test_earthgazers_workflow_runs_end_to_end_through_a_sigkill(
    stack: Pipeline, stac_api: StacServer, tmp_path: Path
) -> None:
    doomed = start_worker(stack, *EARTHGAZER, "--queue", "earthgazer.cpu")
    alice = stack.client("alice")
    backup_dir = tmp_path / "backup"
    workflow_id = submit(
        alice,
        workflow="process_multiple_captures_workflow",
        args={
            "capture_ids": list(MATCHING_IDS),
            "bands": list(BANDS),
            "bounds": list(AOI_BBOX),
            "stac_url": stac_api.url,
            "collection": SENTINEL_COLLECTION,
            "backup_dir": str(backup_dir),
            "export_format": "zip",
        },
    )
    wait_until(lambda: stack_step_launched(alice, workflow_id), "a stack step queued", poll_s=0.01)
    doomed.kill()
    start_worker(stack, *EARTHGAZER, "--queue", "earthgazer.cpu")
    done = wait_workflow(alice, workflow_id, timeout=180)
    assert done["status"] == "completed", json.dumps(done, indent=1)[:4000]
    steps = steps_of(done)

    temporal = steps["process_multiple_captures_workflow/temporal"]["result"]
    captures = [stac_api.capture(cid) for cid in MATCHING_IDS]
    got = [
        {k: row[k] for k in ("mean", "min", "max", "std", "valid_share")}
        for row in temporal["rows"]
    ]
    for got_row, want in zip(got, expected_rows(captures), strict=True):
        for key, value in want.items():
            assert got_row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key

    for capture in captures:
        stored = backup_dir / capture.id
        for band in BANDS:
            copy = stored / f"{capture.id}_{band}.tif"
            assert hashlib.sha256(copy.read_bytes()).hexdigest() == capture.sha256(band)

    names = {artifact["name"] for artifact in done["artifacts"]}
    for cid in MATCHING_IDS:
        assert {f"{cid}/stack.tif", f"{cid}/ndvi.tif", f"{cid}/rgb.tif", f"{cid}/rgb.png"} <= names
    assert {"temporal/ndvi_timeseries.csv", "temporal/ndvi_timeseries.png"} <= names
    for artifact in done["artifacts"]:
        response = alice.get(f"/api/v1/workflows/{workflow_id}/artifacts/{artifact['name']}")
        assert response.status_code == 200, artifact
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
    csv = alice.get(
        f"/api/v1/workflows/{workflow_id}/artifacts/temporal/ndvi_timeseries.csv"
    ).text.splitlines()
    assert csv[0] == "date,mean,min,max,std,valid_share"
    assert len(csv) == 1 + len(MATCHING_IDS)

    # The workflow's last step packed everything: its result is the ready archive.
    packed_step = steps["process_multiple_captures_workflow/export"]["result"]
    archive = alice.get(packed_step["download_url"])
    assert hashlib.sha256(archive.content).hexdigest() == packed_step["sha256"]
    exported = alice.post(f"/api/v1/workflows/{workflow_id}/export", json={"format": "zip"})
    assert exported.status_code == 202, exported.text
    export_id = exported.json()["export_id"]
    wait_until(
        lambda: alice.get(f"/api/v1/downloads/exports/{export_id}").json()["status"] == "ready",
        "the export",
    )
    again = alice.get(f"/api/v1/downloads/exports/{export_id}/download")
    assert zipfile.ZipFile(io.BytesIO(again.content)).namelist() == (
        zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    )
    with zipfile.ZipFile(io.BytesIO(archive.content)) as packed:
        members = set(packed.namelist())
        assert {f"workflow/{name}" for name in names} <= members
        for cid in MATCHING_IDS:  # the download steps' original bands too
            assert all(any(m.endswith(f"/{cid}_{band}.tif") for m in members) for band in BANDS)
        collection = json.loads(packed.read("stac-items.json"))
    assert collection["type"] == "FeatureCollection"
    hrefs = {asset["href"] for item in collection["features"] for asset in item["assets"].values()}
    assert {f"./workflow/{name}" for name in names} <= hrefs


def test_bounds_off_a_capture_fail_its_crop_and_the_others_go_on(
    stack: Pipeline, stac_api: StacServer, tmp_path: Path
) -> None:
    start_worker(stack, *EARTHGAZER, "--queue", "earthgazer.cpu")
    alice = stack.client("alice")
    near, far = stac_api.capture(MATCHING_IDS[0]), stac_api.capture(MATCHING_IDS[1])
    folder, far_folder = (str(band_folder(tmp_path, capture)) for capture in (near, far))
    off = [10.0, 10.0, 10.1, 10.1]
    workflow_id = submit(
        alice,
        steps=[
            {
                "key": "stack-near",
                "task": "earthgazer.stack_and_crop",
                "args": {
                    "capture_id": near.id,
                    "captured_at": "2024-06-03T00:00:00Z",
                    "bounds": list(AOI_BBOX),
                    "folder": folder,
                },
            },
            {"key": "ndvi-near", "task": "earthgazer.ndvi", "after": ["stack-near"]},
            {
                "key": "stack-far",
                "task": "earthgazer.stack_and_crop",
                "args": {
                    "capture_id": far.id,
                    "captured_at": "2024-06-13T00:00:00Z",
                    "bounds": off,
                    "folder": far_folder,
                },
            },
            {"key": "ndvi-far", "task": "earthgazer.ndvi", "after": ["stack-far"]},
        ],
    )
    done = wait_workflow(alice, workflow_id, timeout=120)
    steps = steps_of(done)
    assert done["status"] == "failed"
    assert steps["stack-far"]["status"] == "failed"
    assert "do not overlap" in steps["stack-far"]["error"]
    assert steps["ndvi-far"]["status"] == "skipped"
    assert steps["ndvi-near"]["status"] == "completed"
    assert steps["ndvi-near"]["result"]["stats"]["valid_pixels"] > 0
