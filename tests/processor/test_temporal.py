"""NDVI over time: per-date statistics as JSON, CSV and a chart, checked against numpy."""

from __future__ import annotations

import csv
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from services.processor.rasters import ProcessingError
from services.processor.stacks import ndvi_from_stack, stack_and_crop
from services.processor.tasks import NDVI_NODATA
from services.processor.temporal import temporal_analysis
from tests.processor.imagery import (
    CAPTURE_NODATA,
    capture_values,
    covering_window,
    wgs84_box,
    write_band,
    write_capture,
)

if TYPE_CHECKING:
    from pathlib import Path

STACK_BOX = wgs84_box(2.5, 1.5, 60.5, 46.5)
# Inside STACK_BOX: the time series looks at a smaller field.
FIELD_BOX = wgs84_box(10.5, 8.5, 40.5, 30.5)
# Given out of order; the outputs are sorted by date. Seed = which random capture.
CAPTURES = (
    ("2024-07-01T17:05:00Z", 3),
    ("2024-05-02T17:05:00+00:00", 1),
    ("2024-06-01T17:05:00", 2),
)
SEED_BY_DATE = {"2024-05-02T17:05:00Z": 1, "2024-06-01T17:05:00Z": 2, "2024-07-01T17:05:00Z": 3}


@pytest.fixture
def ndvi_files(tmp_path: Path) -> list[tuple[str, str]]:
    """(date, NDVI COG) of each capture, made by the real steps: stack and crop, then NDVI."""
    made = []
    for when, seed in CAPTURES:
        bands = write_capture(tmp_path / f"capture-{seed}", seed)
        stack = tmp_path / f"stack-{seed}.tif"
        stack_and_crop([(name, str(path)) for name, path in bands.items()], STACK_BOX, str(stack))
        ndvi = tmp_path / f"ndvi-{seed}.tif"
        ndvi_from_stack(str(stack), str(ndvi))
        made.append((when, str(ndvi)))
    return made


def _numpy_stats(seed: int, box: tuple[float, float, float, float]) -> dict[str, Any]:
    """The NDVI statistics of capture `seed` inside `box`, straight from its source bands."""
    rows, cols = covering_window(box)
    red = capture_values("B04", seed)[rows, cols].astype(np.float64)
    nir = capture_values("B08", seed)[rows, cols].astype(np.float64)
    valid = (red != CAPTURE_NODATA) & (nir != CAPTURE_NODATA) & (red + nir != 0)
    # NDVI is stored as float32: the statistics are of the stored values.
    ndvi = ((nir[valid] - red[valid]) / (nir[valid] + red[valid])).astype(np.float32)
    values = ndvi.astype(np.float64)
    return {
        "mean": values.mean(),
        "min": values.min(),
        "max": values.max(),
        "std": values.std(),
        "valid_share": valid.sum() / valid.size,
        "valid_pixels": int(valid.sum()),
        "total_pixels": valid.size,
    }


def _assert_rows_match(rows: list[dict[str, Any]], box: tuple[float, float, float, float]) -> None:
    assert [row["date"] for row in rows] == list(SEED_BY_DATE)
    for row in rows:
        seed = SEED_BY_DATE[row["date"]]
        expected = _numpy_stats(seed, box)
        for name, value in expected.items():
            assert float(row[name]) == pytest.approx(value, rel=0, abs=1e-12), (row["date"], name)


def test_the_time_series_within_the_bounds_matches_numpy(
    ndvi_files: list[tuple[str, str]], tmp_path: Path
) -> None:
    out = tmp_path / "temporal"

    result = temporal_analysis(ndvi_files, str(out), bounds=FIELD_BOX)

    _assert_rows_match(result["rows"], FIELD_BOX)
    assert result["captures"] == 3
    assert result["json"] == str(out / "ndvi_timeseries.json")
    document = json.loads((out / "ndvi_timeseries.json").read_text())
    assert document["bounds_wgs84"] == list(FIELD_BOX)
    assert document["rows"] == result["rows"]
    _assert_rows_match(document["rows"], FIELD_BOX)
    with (out / "ndvi_timeseries.csv").open(newline="") as file:
        reader = csv.reader(file)
        assert next(reader) == ["date", "mean", "min", "max", "std", "valid_share"]
        csv_rows = [
            dict(zip(["date", "mean", "min", "max", "std", "valid_share"], r, strict=True))
            for r in reader
        ]
    assert len(csv_rows) == 3
    for csv_row, row in zip(csv_rows, result["rows"], strict=True):
        assert csv_row["date"] == row["date"]
        for name in ("mean", "min", "max", "std", "valid_share"):
            assert float(csv_row[name]) == row[name]
    chart = out / "ndvi_timeseries.png"
    assert result["png"] == str(chart)
    with Image.open(chart) as image:
        assert image.format == "PNG"
        assert image.size == (900, 450)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert chart.stat().st_size > 10_000
    assert colours is not None
    assert len(colours) > 50  # a drawn chart: lines, a shaded band, text, not a blank canvas


def test_without_bounds_the_whole_raster_counts(
    ndvi_files: list[tuple[str, str]], tmp_path: Path
) -> None:
    result = temporal_analysis(ndvi_files, str(tmp_path / "temporal"))

    _assert_rows_match(result["rows"], STACK_BOX)
    assert result["bounds_wgs84"] is None


def test_a_date_without_valid_pixels_has_empty_cells(tmp_path: Path) -> None:
    blank = np.full((20, 20), NDVI_NODATA, dtype=np.float32)
    empty = write_band(tmp_path / "empty.tif", blank, nodata=NDVI_NODATA)
    some = blank.copy()
    some[5:10, 5:10] = 0.5
    half = write_band(tmp_path / "some.tif", some, nodata=NDVI_NODATA)

    result = temporal_analysis(
        [("2024-05-01T00:00:00Z", str(empty)), ("2024-05-11T00:00:00Z", str(half))],
        str(tmp_path / "out"),
    )

    first, second = result["rows"]
    assert (first["mean"], first["min"], first["max"], first["std"]) == (None, None, None, None)
    assert first["valid_share"] == 0.0
    assert (second["mean"], second["std"], second["valid_share"]) == (0.5, 0.0, 25 / 400)
    lines = (tmp_path / "out" / "ndvi_timeseries.csv").read_text().splitlines()
    assert lines[1] == "2024-05-01T00:00:00Z,,,,,0.0"


def test_no_captures_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ProcessingError, match="at least one capture"):
        temporal_analysis([], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_date_that_does_not_parse_is_named(
    ndvi_files: list[tuple[str, str]], tmp_path: Path
) -> None:
    with pytest.raises(ProcessingError, match="'last tuesday' is not an ISO 8601 datetime"):
        temporal_analysis([("last tuesday", ndvi_files[0][1])], str(tmp_path / "out"))


def test_bounds_off_a_capture_name_the_capture(
    ndvi_files: list[tuple[str, str]], tmp_path: Path
) -> None:
    with pytest.raises(ProcessingError, match=r"capture 2024-05-02T17:05:00Z: bounds .* overlap"):
        temporal_analysis(ndvi_files, str(tmp_path / "out"), bounds=(10.0, 45.0, 10.5, 45.5))


def test_a_raster_that_is_no_ndvi_is_refused(tmp_path: Path) -> None:
    band = write_band(tmp_path / "B04.tif", capture_values("B04"))

    with pytest.raises(ProcessingError, match="uint16, not an NDVI raster"):
        temporal_analysis([("2024-05-01T00:00:00Z", str(band))], str(tmp_path / "out"))


def test_statistics_of_a_raster_many_strips_tall_match_numpy(tmp_path: Path) -> None:
    # 1100 rows: three strips of the streaming read, whose partial statistics must merge exactly.
    rng = np.random.default_rng(7)
    values = rng.uniform(-0.2, 0.9, size=(1100, 30)).astype(np.float32)
    values[rng.integers(0, 1100, 200), rng.integers(0, 30, 200)] = NDVI_NODATA
    tall = write_band(tmp_path / "tall.tif", values, nodata=NDVI_NODATA)

    (row,) = temporal_analysis([("2024-05-01T00:00:00Z", str(tall))], str(tmp_path))["rows"]

    good = values[values != NDVI_NODATA].astype(np.float64)
    assert row["valid_pixels"] == good.size
    assert row["mean"] == pytest.approx(float(good.mean()), rel=0, abs=1e-12)
    assert row["std"] == pytest.approx(float(good.std()), rel=0, abs=1e-12)
    assert (row["min"], row["max"]) == (float(good.min()), float(good.max()))
