"""The CPU tasks on real rasters: metadata, quicklooks, COGs, NDVI and RGB composites."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from services.processor import tasks
from services.processor.rasters import ProcessingError
from tests.processor.imagery import (
    NODATA,
    ORIGIN,
    PIXEL_M,
    SIZE,
    UTM_CRS,
    band_values,
    write_band,
    write_sentinel_bands,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def bands(tmp_path: Path) -> dict[str, Path]:
    return write_sentinel_bands(tmp_path / "bands")


# --- metadata ---------------------------------------------------------------------------------


def test_metadata_of_a_geotiff(bands: dict[str, Path]) -> None:
    facts = tasks.extract_metadata(str(bands["B04"]))

    assert facts["type"] == "raster"
    assert facts["driver"] == "GTiff"
    assert facts["content_type"] == "image/tiff"
    assert facts["size"] == bands["B04"].stat().st_size
    assert facts["crs"] == UTM_CRS
    assert facts["epsg"] == 32633
    west, north = ORIGIN
    assert facts["bounds"] == [west, north - SIZE * PIXEL_M, west + SIZE * PIXEL_M, north]
    expected_wgs84 = transform_bounds(UTM_CRS, "EPSG:4326", *facts["bounds"], densify_pts=21)
    assert facts["bounds_wgs84"] == pytest.approx(list(expected_wgs84))
    # 600 km east, 5000 km north in zone 33N is in Croatia, east of 15 deg E.
    assert 16.0 < facts["bounds_wgs84"][0] < 16.5
    assert 45.0 < facts["bounds_wgs84"][1] < 45.2
    assert (facts["width"], facts["height"], facts["count"]) == (SIZE, SIZE, 1)
    assert facts["dtypes"] == ["uint16"]
    assert facts["nodata"] == NODATA
    assert facts["overviews"] == []
    assert facts["resolution"] == [PIXEL_M, PIXEL_M]


def test_metadata_lists_overviews(tmp_path: Path) -> None:
    path = write_band(tmp_path / "ovr.tif", band_values("B04", 1024), tiled=True)
    with rasterio.open(path, "r+") as dataset:
        dataset.build_overviews([2, 4, 8])

    assert tasks.extract_metadata(str(path))["overviews"] == [2, 4, 8]


def test_metadata_of_a_jpeg_with_exif(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x010F] = "Downlink Cameras"  # Make
    exif[0x0110] = "DL-1"  # Model
    exif[0x0112] = 1  # Orientation
    Image.new("RGB", (640, 480), (10, 120, 200)).save(path, format="JPEG", exif=exif)

    facts = tasks.extract_metadata(str(path))

    assert facts["type"] == "image"
    assert facts["content_type"] == "image/jpeg"
    assert (facts["width"], facts["height"], facts["mode"]) == (640, 480, "RGB")
    assert facts["exif"]["Make"] == "Downlink Cameras"
    assert facts["exif"]["Model"] == "DL-1"
    assert facts["exif"]["Orientation"] == 1


def test_metadata_of_anything_else_is_its_type_and_size(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"  # the name lies; the content decides
    path.write_text("just some text\n")

    facts = tasks.extract_metadata(str(path))

    assert facts == {"type": "other", "format": "text", "content_type": "text/plain", "size": 15}


def test_a_corrupt_tiff_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\x13" * 200)

    with pytest.raises(ProcessingError, match=r"not a readable raster: .*broken\.tif"):
        tasks.extract_metadata(str(path))


def test_a_truncated_tiff_fails_its_steps_cleanly(bands: dict[str, Path], tmp_path: Path) -> None:
    whole = write_band(tmp_path / "whole.tif", band_values("B04", 1024), compress="deflate")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])

    with pytest.raises(ProcessingError):
        tasks.make_thumbnail(str(cut), str(tmp_path / "cut.png"))
    with pytest.raises(ProcessingError):
        tasks.make_cog(str(cut), str(tmp_path / "cut.cog.tif"))


# --- thumbnails -------------------------------------------------------------------------------


def test_thumbnail_of_one_16bit_band_is_grey_and_stretched(
    bands: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "thumb.png"

    facts = tasks.make_thumbnail(str(bands["B04"]), str(out))

    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (256, 256)
        assert image.mode == "L"
        pixels = np.asarray(image)
    assert facts == facts | {"width": 256, "height": 256, "mode": "L", "bands": [1]}
    low, high = facts["stretch"][0]
    assert 1000 <= low < high <= 1000 + 997
    # A stretch uses the whole byte range; the no-data corner stays black.
    assert pixels.max() == 255
    assert pixels[8:, 8:].min() >= 1
    assert (pixels[:8, :8] == 0).all()  # 16 x 16 source pixels at half size


def test_thumbnail_of_a_band_stack_is_rgb_and_never_upscaled(tmp_path: Path) -> None:
    stack = np.stack([band_values(name, 200)[:, :150] for name in ("B04", "B03", "B02")])
    path = write_band(tmp_path / "stack.tif", stack, photometric="RGB")
    out = tmp_path / "stack.png"

    facts = tasks.make_thumbnail(str(path), str(out))

    with Image.open(out) as image:
        assert image.mode == "RGB"
        assert image.size == (150, 200)  # smaller than 256: kept as it is
    assert facts["bands"] == [1, 2, 3]


def test_thumbnail_of_a_wide_raster_keeps_the_aspect(tmp_path: Path) -> None:
    path = write_band(tmp_path / "wide.tif", band_values("B08", 1024)[:300, :])
    out = tmp_path / "wide.png"

    tasks.make_thumbnail(str(path), str(out))

    with Image.open(out) as image:
        assert image.size == (256, 75)


def test_thumbnail_reads_overviews_when_there_are_some(tmp_path: Path) -> None:
    path = write_band(tmp_path / "ovr.tif", band_values("B04", 2048), tiled=True)
    with rasterio.open(path, "r+") as dataset:
        dataset.build_overviews([2, 4, 8])

    facts = tasks.make_thumbnail(str(path), str(tmp_path / "ovr.png"))

    assert facts["source_overviews"] == [2, 4, 8]
    assert (facts["width"], facts["height"]) == (256, 256)


def test_thumbnail_of_a_photo(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (1200, 600), (200, 30, 30)).save(path)
    out = tmp_path / "photo.thumb.png"

    facts = tasks.make_thumbnail(str(path), str(out))

    with Image.open(out) as image:
        assert (image.size, image.mode) == ((256, 128), "RGB")
    assert facts == {"width": 256, "height": 128, "mode": "RGB"}


def test_no_thumbnail_of_something_that_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"PK\x03\x04" + bytes(100))

    with pytest.raises(ProcessingError, match=r"not a raster or image \(detected application/zip"):
        tasks.make_thumbnail(str(path), str(tmp_path / "x.png"))


# --- Cloud-Optimized GeoTIFF ------------------------------------------------------------------


def test_cog_is_tiled_compressed_with_overviews_and_validates(tmp_path: Path) -> None:
    source = write_band(tmp_path / "big.tif", band_values("B08", 1500))
    out = tmp_path / "big.cog.tif"

    facts = tasks.make_cog(str(source), str(out))

    valid, errors, _warnings = cog_validate(str(out), quiet=True)
    assert valid, errors
    with rasterio.open(out) as cog, rasterio.open(source) as original:
        assert cog.profile["tiled"]
        assert cog.block_shapes == [(512, 512)]
        assert cog.compression.value == "DEFLATE"
        assert cog.overviews(1) == [2, 4]
        assert cog.crs == original.crs
        assert cog.transform == original.transform
        assert cog.nodata == NODATA
        assert np.array_equal(cog.read(1), original.read(1))  # lossless
    assert facts["valid_cog"] is True
    assert facts["overviews"] == [2, 4]


def test_no_cog_of_a_text_file(tmp_path: Path) -> None:
    path = tmp_path / "readme.tif"
    path.write_text("hello")

    with pytest.raises(ProcessingError, match="not a raster"):
        tasks.make_cog(str(path), str(tmp_path / "x.tif"))


# --- composites -------------------------------------------------------------------------------


def _ndvi(red: float, nir: float) -> float:
    return (nir - red) / (nir + red)


def test_ndvi_matches_numpy_at_known_pixels_and_keeps_nodata(
    bands: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ndvi.tif"

    facts = tasks.build_ndvi({"red": str(bands["B04"]), "nir": str(bands["B08"])}, None, str(out))

    assert cog_validate(str(out), quiet=True)[0]
    red = band_values("B04").astype(np.float64)
    nir = band_values("B08").astype(np.float64)
    with rasterio.open(out) as ndvi:
        assert ndvi.dtypes == ("float32",)
        assert ndvi.nodata == tasks.NDVI_NODATA
        assert ndvi.crs.to_string() == UTM_CRS
        values = ndvi.read(1)
    for row, col in [(16, 16), (100, 200), (511, 511), (300, 17), (250, 480)]:
        expected = _ndvi(red[row, col], nir[row, col])
        assert abs(float(values[row, col]) - expected) < 1e-6, (row, col)
    valid = red != NODATA
    np.testing.assert_allclose(
        values[valid], (nir[valid] - red[valid]) / (nir[valid] + red[valid]), rtol=0, atol=1e-6
    )
    assert (values[:16, :16] == tasks.NDVI_NODATA).all()
    assert facts["nodata_pixels"] == 16 * 16
    assert facts["valid_pixels"] == SIZE * SIZE - 16 * 16


def test_ndvi_facts_sum_up_the_valid_pixels(bands: dict[str, Path], tmp_path: Path) -> None:
    red = band_values("B04").astype(np.float64)
    nir = band_values("B08").astype(np.float64)
    valid = red != NODATA
    expected = ((nir[valid] - red[valid]) / (nir[valid] + red[valid])).astype(np.float32)

    facts = tasks.build_ndvi(
        {"red": str(bands["B04"]), "nir": str(bands["B08"])}, None, str(tmp_path / "ndvi.tif")
    )

    assert facts["kind"] == "ndvi"
    assert facts["valid_cog"] is True
    assert facts["min"] == pytest.approx(float(expected.min()), abs=1e-7)
    assert facts["max"] == pytest.approx(float(expected.max()), abs=1e-7)
    assert facts["mean"] == pytest.approx(float(expected.astype(np.float64).mean()), abs=1e-7)
    assert facts["reprojected_bands"] == []
    assert facts["crop_bounds_wgs84"] is None


def test_ndvi_of_bands_with_no_light_has_no_statistics(tmp_path: Path) -> None:
    dark = np.zeros((64, 64), dtype=np.uint16)
    red = write_band(tmp_path / "red.tif", dark, nodata=None)
    nir = write_band(tmp_path / "nir.tif", dark, nodata=None)

    facts = tasks.build_ndvi({"red": str(red), "nir": str(nir)}, None, str(tmp_path / "ndvi.tif"))

    assert (facts["valid_pixels"], facts["nodata_pixels"]) == (0, 64 * 64)
    assert (facts["min"], facts["max"], facts["mean"]) == (None, None, None)


def test_ndvi_crop_to_wgs84_bounds_gives_the_covering_window(
    bands: dict[str, Path], tmp_path: Path
) -> None:
    west, north = ORIGIN
    to_wgs84 = Transformer.from_crs(UTM_CRS, "EPSG:4326", always_xy=True)
    # A bbox around the UTM rectangle of columns 100-300 and rows 50-250.
    lon_w, lat_n = to_wgs84.transform(west + 100 * PIXEL_M, north - 50 * PIXEL_M)
    lon_e, lat_s = to_wgs84.transform(west + 300 * PIXEL_M, north - 250 * PIXEL_M)
    bounds = (lon_w, lat_s, lon_e, lat_n)
    # The expected window: the bbox's footprint in UTM (densified edges), out to whole pixels.
    to_utm = Transformer.from_crs("EPSG:4326", UTM_CRS, always_xy=True)
    xs, ys = [], []
    for t in np.linspace(0, 1, 50):
        for lon, lat in [
            (lon_w + t * (lon_e - lon_w), lat_s),
            (lon_w + t * (lon_e - lon_w), lat_n),
            (lon_w, lat_s + t * (lat_n - lat_s)),
            (lon_e, lat_s + t * (lat_n - lat_s)),
        ]:
            x, y = to_utm.transform(lon, lat)
            xs.append(x)
            ys.append(y)
    col0 = math.floor((min(xs) - west) / PIXEL_M)
    col1 = math.ceil((max(xs) - west) / PIXEL_M)
    row0 = math.floor((north - max(ys)) / PIXEL_M)
    row1 = math.ceil((north - min(ys)) / PIXEL_M)
    out = tmp_path / "crop.tif"

    tasks.build_ndvi({"red": str(bands["B04"]), "nir": str(bands["B08"])}, bounds, str(out))

    with rasterio.open(out) as ndvi:
        assert (ndvi.height, ndvi.width) == (row1 - row0, col1 - col0)
        assert 200 <= ndvi.width <= 215
        assert 200 <= ndvi.height <= 215  # grid convergence tilts the bbox a little
        assert ndvi.transform.c == pytest.approx(west + col0 * PIXEL_M)
        assert ndvi.transform.f == pytest.approx(north - row0 * PIXEL_M)
        values = ndvi.read(1)
    red = band_values("B04").astype(np.float64)[row0:row1, col0:col1]
    nir = band_values("B08").astype(np.float64)[row0:row1, col0:col1]
    np.testing.assert_allclose(values, (nir - red) / (nir + red), rtol=0, atol=1e-6)


def test_bounds_outside_the_bands_are_a_clear_error(bands: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ProcessingError, match="do not overlap"):
        tasks.build_ndvi(
            {"red": str(bands["B04"]), "nir": str(bands["B08"])},
            (-10.0, 10.0, -9.0, 11.0),
            str(tmp_path / "x.tif"),
        )


def test_a_band_on_another_grid_is_reprojected_onto_the_red_one(
    bands: dict[str, Path], tmp_path: Path
) -> None:
    # NIR at 20 m (half the pixels each way), as Sentinel-2's B8A is: a constant 3000.
    nir = write_band(
        tmp_path / "B8A.tif", np.full((SIZE // 2, SIZE // 2), 3000, dtype=np.uint16), pixel=20.0
    )
    out = tmp_path / "ndvi.tif"

    facts = tasks.build_ndvi({"red": str(bands["B04"]), "nir": str(nir)}, None, str(out))

    assert facts["reprojected_bands"] == ["nir"]
    with rasterio.open(out) as ndvi:
        assert (ndvi.width, ndvi.height) == (SIZE, SIZE)
        values = ndvi.read(1)
    red = band_values("B04").astype(np.float64)
    assert abs(float(values[200, 200]) - _ndvi(red[200, 200], 3000.0)) < 1e-6


def test_rgb_composite_is_an_8bit_cog_with_a_png_preview(
    bands: dict[str, Path], tmp_path: Path
) -> None:
    out, preview = tmp_path / "rgb.tif", tmp_path / "rgb.png"

    facts = tasks.build_rgb(
        {"red": str(bands["B04"]), "green": str(bands["B03"]), "blue": str(bands["B02"])},
        None,
        str(out),
        str(preview),
    )

    assert cog_validate(str(out), quiet=True)[0]
    with rasterio.open(out) as rgb:
        assert rgb.count == 3
        assert rgb.dtypes == ("uint8", "uint8", "uint8")
        assert [c.name for c in rgb.colorinterp] == ["red", "green", "blue"]
        data = rgb.read()
    assert (data[:, :16, :16] == 0).all()  # no data stays no data
    assert data[:, 16:, 16:].min() >= 1
    assert data.max() == 255
    with Image.open(preview) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (512, 512))
    assert set(facts["stretch"]) == {"red", "green", "blue"}


def test_a_missing_role_is_a_clear_error(bands: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ProcessingError, match="missing band"):
        tasks.build_rgb({"red": str(bands["B04"])}, None, str(tmp_path / "a"), str(tmp_path / "b"))
