"""Stack-and-crop of one capture's bands, and the NDVI and RGB composites of a stack."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from services.processor.rasters import ProcessingError
from services.processor.stacks import ndvi_from_stack, rgb_from_stack, stack_and_crop
from services.processor.tasks import NDVI_NODATA
from tests.processor.imagery import (
    CAPTURE_BANDS,
    CAPTURE_CRS,
    CAPTURE_NODATA,
    CAPTURE_ORIGIN,
    CAPTURE_SHAPE,
    DARK_PIXELS,
    capture_values,
    covering_window,
    upsampled,
    wgs84_box,
    write_band,
    write_capture,
)

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

# Mid-pixel corners: columns 5.5-50.5 and rows 3.5-44.5 of the 64 x 48 capture.
BOX = wgs84_box(5.5, 3.5, 50.5, 44.5)


@pytest.fixture
def capture(tmp_path: Path) -> dict[str, Path]:
    return write_capture(tmp_path / "capture")


def _band_list(capture: dict[str, Path]) -> list[tuple[str, str]]:
    return [(name, str(path)) for name, path in capture.items()]


@pytest.fixture
def stack(capture: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "stack.tif"
    stack_and_crop(_band_list(capture), BOX, str(out))
    return out


def _expected_ndvi(rows: slice, cols: slice) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    red = capture_values("B04")[rows, cols].astype(np.float64)
    nir = capture_values("B08")[rows, cols].astype(np.float64)
    valid = (red != CAPTURE_NODATA) & (nir != CAPTURE_NODATA) & (red + nir != 0)
    ndvi = np.full(red.shape, NDVI_NODATA, dtype=np.float32)
    ndvi[valid] = ((nir[valid] - red[valid]) / (nir[valid] + red[valid])).astype(np.float32)
    return ndvi, valid


# --- stack and crop ---------------------------------------------------------------------------


def test_the_stack_is_the_window_of_the_bbox_in_every_band(
    capture: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "stack.tif"

    facts = stack_and_crop(_band_list(capture), BOX, str(out))

    rows, cols = covering_window(BOX)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (3, 45, 5, 51)
    assert cog_validate(str(out), quiet=True)[0]
    with rasterio.open(out) as stacked:
        assert stacked.count == len(CAPTURE_BANDS)
        assert list(stacked.descriptions) == list(CAPTURE_BANDS)
        assert stacked.crs.to_string() == CAPTURE_CRS
        assert (stacked.height, stacked.width) == (rows.stop - rows.start, cols.stop - cols.start)
        assert stacked.res == (10.0, 10.0)
        west, north = CAPTURE_ORIGIN
        assert stacked.transform.c == pytest.approx(west + cols.start * 10.0)
        assert stacked.transform.f == pytest.approx(north - rows.start * 10.0)
        assert stacked.nodata == CAPTURE_NODATA
        assert stacked.dtypes == ("uint16",) * len(CAPTURE_BANDS)
        data = stacked.read()
        utm_bounds = list(stacked.bounds)
    for index, name in enumerate(CAPTURE_BANDS):
        # B11 is 20 m: each of its pixels covers 2 x 2 pixels of the stack, value unchanged.
        np.testing.assert_array_equal(data[index], upsampled(name)[rows, cols], err_msg=name)
    assert (facts["width"], facts["height"]) == (cols.stop - cols.start, rows.stop - rows.start)
    assert facts["crs"] == CAPTURE_CRS
    assert facts["bounds"] == utm_bounds
    assert facts["bounds_wgs84"] == pytest.approx(
        list(transform_bounds(CAPTURE_CRS, "EPSG:4326", *utm_bounds, densify_pts=21))
    )
    assert facts["bands"] == list(CAPTURE_BANDS)
    assert facts["dtype"] == "uint16"
    assert facts["resampled_bands"] == ["B11"]
    assert facts["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert facts["size"] == out.stat().st_size
    assert not (tmp_path / "stack.tif.strips.tif").exists()


def test_a_bbox_past_the_capture_is_clipped_to_it(capture: dict[str, Path], tmp_path: Path) -> None:
    box = wgs84_box(40.5, 30.5, 90.5, 70.5)  # beyond the east and south edges

    facts = stack_and_crop(_band_list(capture), box, str(tmp_path / "edge.tif"))

    rows, cols = covering_window(box)
    assert (rows.stop, cols.stop) == CAPTURE_SHAPE
    assert (facts["height"], facts["width"]) == (rows.stop - rows.start, cols.stop - cols.start)
    with rasterio.open(tmp_path / "edge.tif") as stacked:
        np.testing.assert_array_equal(stacked.read(3), capture_values("B04")[rows, cols])


def test_a_bbox_off_the_capture_names_both_extents(
    capture: dict[str, Path], tmp_path: Path
) -> None:
    box = (10.0, 45.0, 10.5, 45.5)  # the Alps, far from Oklahoma
    with rasterio.open(capture["B02"]) as band:
        extent = transform_bounds(band.crs, "EPSG:4326", *band.bounds, densify_pts=21)

    with pytest.raises(ProcessingError) as caught:
        stack_and_crop(_band_list(capture), box, str(tmp_path / "none.tif"))

    message = str(caught.value)
    assert "do not overlap" in message
    assert str(list(box)) in message
    assert str([round(edge, 6) for edge in extent]) in message
    assert not (tmp_path / "none.tif").exists()


def test_a_bbox_that_is_no_box_is_refused(capture: dict[str, Path], tmp_path: Path) -> None:
    west, south, east, north = BOX
    with pytest.raises(ProcessingError, match=r"bounds must be \(west, south, east, north\)"):
        stack_and_crop(_band_list(capture), (east, south, west, north), str(tmp_path / "x.tif"))


def test_bands_on_different_crs_are_refused(capture: dict[str, Path], tmp_path: Path) -> None:
    other = write_band(
        tmp_path / "B05.tif", capture_values("B04"), crs="EPSG:32615", origin=CAPTURE_ORIGIN
    )
    bands = [*_band_list(capture), ("B05", str(other))]

    with pytest.raises(ProcessingError, match=r"share a CRS.*B05: EPSG:32615"):
        stack_and_crop(bands, BOX, str(tmp_path / "x.tif"))


def test_a_band_named_twice_is_refused(capture: dict[str, Path], tmp_path: Path) -> None:
    bands = [("B04", str(capture["B04"])), ("B04", str(capture["B08"]))]

    with pytest.raises(ProcessingError, match="given twice: B04"):
        stack_and_crop(bands, BOX, str(tmp_path / "x.tif"))


# --- NDVI -------------------------------------------------------------------------------------


def test_ndvi_of_a_stack_matches_numpy_on_the_same_pixels(stack: Path, tmp_path: Path) -> None:
    out = tmp_path / "ndvi.tif"

    facts = ndvi_from_stack(str(stack), str(out))

    rows, cols = covering_window(BOX)
    expected, valid = _expected_ndvi(rows, cols)
    assert cog_validate(str(out), quiet=True)[0]
    with rasterio.open(out) as ndvi:
        assert ndvi.dtypes == ("float32",)
        assert ndvi.nodata == NDVI_NODATA
        values = ndvi.read(1)
    np.testing.assert_allclose(values[valid], expected[valid], rtol=0, atol=1e-7)
    assert (values[~valid] == NDVI_NODATA).all()
    # The dark pixels (red + NIR == 0) are inside the window and counted as no data.
    for row, col in DARK_PIXELS:
        assert values[row - rows.start, col - cols.start] == NDVI_NODATA
    good = expected[valid].astype(np.float64)
    assert facts["valid_pixels"] == int(valid.sum())
    assert facts["total_pixels"] == valid.size
    assert facts["valid_share"] == pytest.approx(valid.sum() / valid.size, abs=1e-12)
    assert 0 < facts["valid_share"] < 1
    assert facts["mean"] == pytest.approx(float(good.mean()), abs=1e-12)
    assert facts["std"] == pytest.approx(float(good.std()), abs=1e-12)
    assert facts["min"] == float(good.min())
    assert facts["max"] == float(good.max())


def test_ndvi_of_a_stack_without_the_band_names_it(stack: Path, tmp_path: Path) -> None:
    with pytest.raises(ProcessingError, match=r"no band B8A \(bands: B02, B03, B04, B08, B11\)"):
        ndvi_from_stack(str(stack), str(tmp_path / "ndvi.tif"), nir="B8A")
    assert not (tmp_path / "ndvi.tif").exists()


# --- RGB --------------------------------------------------------------------------------------


def test_rgb_of_a_stack_is_an_8bit_cog_stretched_per_band(stack: Path, tmp_path: Path) -> None:
    out, preview = tmp_path / "rgb.tif", tmp_path / "rgb.png"

    facts = rgb_from_stack(str(stack), str(out), preview=str(preview))

    rows, cols = covering_window(BOX)
    sources = {
        role: capture_values(name)[rows, cols]
        for role, name in (("red", "B04"), ("green", "B03"), ("blue", "B02"))
    }
    assert cog_validate(str(out), quiet=True)[0]
    with rasterio.open(out) as rgb:
        assert rgb.count == 3
        assert rgb.dtypes == ("uint8",) * 3
        assert [c.name for c in rgb.colorinterp] == ["red", "green", "blue"]
        data = rgb.read()
    missing = np.zeros(data.shape[1:], dtype=bool)
    for source in sources.values():
        missing |= source == CAPTURE_NODATA
    assert missing.any()
    assert (data[:, missing] == 0).all()
    assert data[:, ~missing].min() >= 1
    for role, source in sources.items():
        low, high = np.percentile(source[source != CAPTURE_NODATA], (2.0, 98.0))
        assert facts["stretch"][role] == pytest.approx([low, high])
    with Image.open(preview) as image:
        assert (image.format, image.mode) == ("PNG", "RGB")
        assert image.size == (cols.stop - cols.start, rows.stop - rows.start)


def test_rgb_without_a_preview_writes_only_the_cog(stack: Path, tmp_path: Path) -> None:
    facts = rgb_from_stack(str(stack), str(tmp_path / "rgb.tif"), bands=("B08", "B04", "B03"))

    assert facts["preview"] is None
    assert facts["bands"] == {"red": "B08", "green": "B04", "blue": "B03"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == []


def test_rgb_of_a_stack_without_the_band_names_it(stack: Path, tmp_path: Path) -> None:
    with pytest.raises(ProcessingError, match="no band B01"):
        rgb_from_stack(str(stack), str(tmp_path / "rgb.tif"), bands=("B04", "B03", "B01"))
