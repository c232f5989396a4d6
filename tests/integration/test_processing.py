"""Processing end to end: gateway → downloader → tracker → processor (process pool) → artifacts.

Real Sentinel-2-like GeoTIFFs are served over HTTP, downloaded, processed by a processor
subprocess, and every output is fetched back through the API and checked with rasterio/Pillow.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_validate

from tests.processor.imagery import PIXEL_M, band_values, write_band, write_sentinel_bands

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from tests.integration.conftest import Pipeline
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

STEPS = ["metadata", "thumbnail", "cog"]
# Integration runs keep retries and reclaims quick.
FAST = {"DOWNLINK_CLAIM_IDLE": "3", "DOWNLINK_RETRY_BACKOFF": "0.5"}


def _get(client: httpx.Client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return response.content


def _validate_cog(data: bytes, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    assert valid, errors


def test_a_job_gets_metadata_thumbnails_cogs_and_composites(
    pipeline_factory: Any, file_server: FileServer, tmp_path: Path
) -> None:
    pipeline: Pipeline = pipeline_factory(**FAST)
    pipeline.start_downloader()
    pipeline.start_processor("--concurrency", "2")
    alice = pipeline.client("alice")
    write_sentinel_bands(file_server.root)
    (file_server.root / "broken.tif").write_bytes(b"II*\x00" + b"\x07" * 4000)
    urls = [file_server.file_url(name) for name in ("B02.tif", "B03.tif", "B04.tif", "B08.tif")]
    bounds = [16.28, 45.10, 16.30, 45.13]
    body = {
        "urls": [*urls, file_server.file_url("broken.tif")],
        "process": STEPS,
        "composites": [
            {"kind": "ndvi", "bands": {"red": "B04.tif", "nir": "B08.tif"}, "bounds": bounds},
            {"kind": "rgb", "bands": {"red": "B04.tif", "green": "B03.tif", "blue": "B02.tif"}},
        ],
    }

    response = alice.post("/api/v1/downloads/download", json=body)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    status = pipeline.wait_job(alice, job_id, timeout=120)

    assert status["status"] == "completed", status
    assert status["progress"]["percentage"] == 100.0
    assert status["progress"]["processing"] == {
        "files_total": 5,
        "files_completed": 4,
        "files_failed": 1,
        "composites_total": 2,
        "composites_completed": 2,
        "composites_failed": 0,
    }
    result = pipeline.result(alice, job_id)
    by_name = {entry["filename"]: entry for entry in result["results"]}

    # Per-file artifacts of a band.
    red = by_name["B04.tif"]["artifacts"]
    assert red["status"] == "completed"
    assert red["errors"] == {}
    assert red["metadata"]["crs"] == "EPSG:32633"
    assert red["metadata"]["dtypes"] == ["uint16"]
    assert red["metadata"]["width"] == 512
    with Image.open(io.BytesIO(_get(alice, red["thumbnail"]["download_url"]))) as thumbnail:
        assert (thumbnail.format, thumbnail.size, thumbnail.mode) == ("PNG", (256, 256), "L")
    cog = _get(alice, red["cog"]["download_url"])
    assert len(cog) == red["cog"]["size"]
    _validate_cog(cog, tmp_path, "B04.cog.tif")

    # The corrupt file: downloaded, with clear processing errors.
    broken = by_name["broken.tif"]
    assert broken["status"] == "completed"
    assert broken["hash"] is not None
    assert broken["artifacts"]["status"] == "failed"
    assert set(broken["artifacts"]["errors"]) == {"metadata", "thumbnail", "cog"}
    assert "not a readable raster" in broken["artifacts"]["error"]

    # The composites.
    ndvi_entry, rgb_entry = result["composites"]
    assert (ndvi_entry["status"], rgb_entry["status"]) == ("completed", "completed")
    (ndvi_artifact,) = ndvi_entry["artifacts"]
    ndvi_bytes = _get(alice, ndvi_artifact["download_url"])
    _validate_cog(ndvi_bytes, tmp_path, "ndvi.tif")
    with MemoryFile(ndvi_bytes) as memory, memory.open() as ndvi:
        assert ndvi.dtypes == ("float32",)
        values = ndvi.read(1)
        west, north = ndvi.transform.c, ndvi.transform.f
    col0 = round((west - 600_000.0) / PIXEL_M)
    row0 = round((5_000_000.0 - north) / PIXEL_M)
    red_values = band_values("B04").astype(np.float64)
    nir_values = band_values("B08").astype(np.float64)
    for row, col in [(0, 0), (10, 20), (values.shape[0] - 1, values.shape[1] - 1)]:
        r, n = red_values[row0 + row, col0 + col], nir_values[row0 + row, col0 + col]
        assert abs(float(values[row, col]) - (n - r) / (n + r)) < 1e-6
    kinds = {artifact["kind"]: artifact for artifact in rgb_entry["artifacts"]}
    assert set(kinds) == {"rgb", "rgb_preview"}
    with MemoryFile(_get(alice, kinds["rgb"]["download_url"])) as memory, memory.open() as rgb:
        assert (rgb.count, rgb.dtypes[0]) == (3, "uint8")
    with Image.open(io.BytesIO(_get(alice, kinds["rgb_preview"]["download_url"]))) as preview:
        assert (preview.format, preview.mode) == ("PNG", "RGB")

    # Another user sees none of it.
    bob = pipeline.client("bob")
    assert bob.get(red["thumbnail"]["download_url"]).status_code == 404


@pytest.mark.slow
def test_a_processor_killed_mid_task_leaves_the_work_to_another(
    pipeline_factory: Any, file_server: FileServer, tmp_path: Path
) -> None:
    pipeline: Pipeline = pipeline_factory(**FAST)
    pipeline.start_downloader()
    first = pipeline.start_processor("--concurrency", "1")
    alice = pipeline.client("alice")
    # Big enough that its thumbnail and COG take seconds: the kill lands in the middle.
    size = 6144
    rows, cols = np.indices((size, size), dtype=np.uint32)
    rng = np.random.default_rng(7)
    data = (1000 + (rows + 3 * cols) % 4000 + rng.integers(0, 50, (size, size))).astype(np.uint16)
    write_band(file_server.root / "big.tif", data, tiled=True)
    del data, rows, cols

    response = alice.post(
        "/api/v1/downloads/download",
        json={"urls": [file_server.file_url("big.tif")], "process": STEPS},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    first.wait_for_log(r"step metadata of file \S+ done", timeout=60)
    first.kill()  # SIGKILL, pool workers included
    first.wait(timeout=10)
    assert "processed file" not in first.log_text(), "the work ended before the kill"

    second = pipeline.start_processor("--concurrency", "1")
    status = pipeline.wait_job(alice, job_id, timeout=180)

    assert status["status"] == "completed"
    (entry,) = pipeline.result(alice, job_id)["results"]
    artifacts = entry["artifacts"]
    assert artifacts["status"] == "completed", artifacts
    assert artifacts["metadata"]["width"] == size
    with Image.open(io.BytesIO(_get(alice, artifacts["thumbnail"]["download_url"]))) as image:
        assert image.size == (256, 256)
    cog = _get(alice, artifacts["cog"]["download_url"])
    _validate_cog(cog, tmp_path, "big.cog.tif")
    with MemoryFile(cog) as memory, memory.open() as dataset:
        assert dataset.overviews(1)
    assert "reclaimed" in second.log_text()


def test_processing_never_blocks_downloads(pipeline_factory: Any, file_server: FileServer) -> None:
    """With no processor running at all, downloads still finish; the job waits in progress."""
    pipeline: Pipeline = pipeline_factory(**FAST)
    pipeline.start_downloader()
    alice = pipeline.client("alice")
    write_sentinel_bands(file_server.root)
    response = alice.post(
        "/api/v1/downloads/download",
        json={"urls": [file_server.file_url("B04.tif")], "process": ["metadata"]},
    )
    job_id = response.json()["job_id"]

    deadline = time.monotonic() + 30
    while True:
        status = alice.get(f"/api/v1/downloads/jobs/{job_id}").json()
        if status["progress"]["completed"] == 1:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["status"] == "in_progress"
    assert status["progress"]["percentage"] == 50.0

    pipeline.start_processor("--concurrency", "1")
    assert pipeline.wait_job(alice, job_id, timeout=60)["status"] == "completed"
    (entry,) = pipeline.result(alice, job_id)["results"]
    assert entry["artifacts"]["metadata"]["count"] == 1
