"""One capture's bands as one cropped multi-band COG, and the NDVI and RGB composites made from it.

Sync and CPU-bound like tasks.py (they run in pool workers); bands in a stack are found by their
description, which is the band name ("B04") the stack was built with.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds

from services.processor.rasters import (
    WGS84,
    AlignedBand,
    Grid,
    ProcessingError,
    open_raster,
    reference_grid,
)
from services.processor.tasks import (
    PREVIEW_MAX_PX,
    RGB_BANDS,
    _input_errors,
    _rgb_limits,
    _rgb_preview,
    _strip_profile,
    _translate_to_cog,
    _validated,
    _write_ndvi_strips,
    _write_rgb_strips,
)

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

# --- stack and crop ---------------------------------------------------------------------------


@_input_errors
def stack_and_crop(
    bands: Sequence[tuple[str, str]], bounds: tuple[float, float, float, float], dst: str
) -> dict[str, Any]:
    """The bands of one capture cropped to the WGS84 `bounds`, as one multi-band COG at `dst`.

    The finest band sets the grid; coarser bands are upsampled onto it by nearest neighbour,
    so every stacked value is one the sensor measured.
    """
    names = _band_names(bands)
    staging = f"{dst}.strips.tif"
    try:
        with contextlib.ExitStack() as stack:
            datasets = [stack.enter_context(open_raster(path)) for _name, path in bands]
            crs = _common_crs(names, datasets)
            finest = min(range(len(datasets)), key=lambda i: _pixel_area(datasets[i]))
            grid = reference_grid(datasets[finest], bounds)
            aligned = [
                AlignedBand(dataset, grid, resampling=Resampling.nearest) for dataset in datasets
            ]
            for band in aligned:
                stack.callback(band.close)
            nodata = _common_nodata(names, datasets)
            dtype = np.result_type(*(dataset.dtypes[0] for dataset in datasets)).name
            _write_stack_strips(grid, names, aligned, staging, dtype=dtype, nodata=nodata)
        with rasterio.open(staging) as strips:
            _translate_to_cog(strips, dst)
    finally:
        Path(staging).unlink(missing_ok=True)
    facts = _validated(dst)
    return facts | {
        "kind": "stack",
        "bands": names,
        "bounds_wgs84": list(transform_bounds(crs, WGS84, *facts["bounds"], densify_pts=21)),
        "crop_bounds_wgs84": list(bounds),
        "resolution": [abs(grid.transform.a), abs(grid.transform.e)],
        "reference_band": names[finest],
        "resampled_bands": [
            name for name, band in zip(names, aligned, strict=True) if band.reprojected
        ],
        **_file_digest(dst),
    }


def _band_names(bands: Sequence[tuple[str, str]]) -> list[str]:
    names = [name for name, _path in bands]
    if not names:
        raise ProcessingError("a stack needs at least one band; got none")
    if any(not name for name in names):
        raise ProcessingError("every band needs a name (such as B04); got an empty one")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ProcessingError(f"band name(s) given twice: {', '.join(duplicates)}")
    return names


def _common_crs(names: list[str], datasets: list[DatasetReader]) -> Any:
    """The CRS every band shares; bands of one capture on different CRSs are a mix-up."""
    crs_of = {name: dataset.crs for name, dataset in zip(names, datasets, strict=True)}
    if any(crs is None for crs in crs_of.values()):
        missing = [name for name, crs in crs_of.items() if crs is None]
        raise ProcessingError(f"band(s) {', '.join(missing)} have no CRS")
    if len({crs.to_string() for crs in crs_of.values()}) > 1:
        listed = ", ".join(f"{name}: {crs.to_string()}" for name, crs in crs_of.items())
        raise ProcessingError(f"the bands of one capture must share a CRS; got {listed}")
    return crs_of[names[0]]


def _common_nodata(names: list[str], datasets: list[DatasetReader]) -> float | None:
    """The no-data value every band shares: a multi-band GeoTIFF has just one."""
    values: dict[str, float | None] = {
        name: dataset.nodata for name, dataset in zip(names, datasets, strict=True)
    }
    distinct = {
        "nan" if value is not None and np.isnan(value) else value for value in values.values()
    }
    if len(distinct) > 1:
        listed = ", ".join(f"{name}: {value}" for name, value in values.items())
        raise ProcessingError(f"the bands disagree on their no-data value ({listed})")
    return values[names[0]]


def _pixel_area(dataset: DatasetReader) -> float:
    width, height = dataset.res
    return float(width * height)


def _write_stack_strips(
    grid: Grid,
    names: list[str],
    aligned: list[AlignedBand],
    staging: str,
    *,
    dtype: str,
    nodata: float | None,
) -> None:
    """Write every aligned band to `staging`, one strip at a time, named by its description."""
    profile = _strip_profile(grid, dtype=dtype, count=len(names), nodata=0)
    profile["nodata"] = nodata
    with rasterio.open(staging, "w", **profile) as out:
        for index, name in enumerate(names, 1):
            out.set_band_description(index, name)
        for window in grid.strips():
            for index, band in enumerate(aligned, 1):
                data = band.read(window)
                values = np.ma.filled(data, nodata) if nodata is not None else np.ma.getdata(data)
                out.write(values.astype(dtype), index, window=window)


def _file_digest(path: str) -> dict[str, Any]:
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256")
    return {"sha256": digest.hexdigest(), "size": Path(path).stat().st_size}


# --- composites of a stack --------------------------------------------------------------------


@contextlib.contextmanager
def _stack_bands(src: str, wanted: dict[str, str]) -> Iterator[tuple[Grid, dict[str, AlignedBand]]]:
    """The stack's bands named in `wanted` (role -> band name), on the stack's own grid."""
    with open_raster(src) as dataset:
        descriptions = list(dataset.descriptions)
        missing = [name for name in wanted.values() if name not in descriptions]
        if missing:
            present = ", ".join(d for d in descriptions if d) or "none named"
            raise ProcessingError(
                f"the stack {Path(src).name} has no band {', '.join(missing)} (bands: {present})"
            )
        grid = reference_grid(dataset, None)
        yield (
            grid,
            {
                role: AlignedBand(dataset, grid, descriptions.index(name) + 1)
                for role, name in wanted.items()
            },
        )


@_input_errors
def ndvi_from_stack(src: str, dst: str, *, red: str = "B04", nir: str = "B08") -> dict[str, Any]:
    """NDVI = (nir - red) / (nir + red) of a stack as a float32 COG, with its statistics.

    Pixels where either band has no data or both are zero are NDVI_NODATA (-9999) and left out
    of the statistics (mean, min, max, population std, valid share).
    """
    staging = f"{dst}.strips.tif"
    try:
        with _stack_bands(src, {"red": red, "nir": nir}) as (grid, aligned):
            stats = _write_ndvi_strips(grid, aligned, staging)
        with rasterio.open(staging) as strips:
            _translate_to_cog(strips, dst)
    finally:
        Path(staging).unlink(missing_ok=True)
    return _validated(dst) | {"kind": "ndvi", "bands": {"red": red, "nir": nir}, **stats.facts()}


@_input_errors
def rgb_from_stack(
    src: str,
    dst: str,
    *,
    bands: tuple[str, str, str] = ("B04", "B03", "B02"),
    preview: str | None = None,
) -> dict[str, Any]:
    """An 8-bit true-colour COG of a stack (each band stretched 2-98 %), and a PNG if asked."""
    if len(bands) != len(RGB_BANDS):
        raise ProcessingError(f"bands must name red, green and blue; got {list(bands)}")
    staging = f"{dst}.strips.tif"
    wanted = dict(zip(RGB_BANDS, bands, strict=True))
    try:
        with _stack_bands(src, wanted) as (grid, aligned):
            limits = _rgb_limits(grid, aligned)
            _write_rgb_strips(grid, aligned, limits, staging)
        with rasterio.open(staging) as strips:
            _translate_to_cog(strips, dst)
            preview_facts = (
                None if preview is None else _rgb_preview(strips, preview, PREVIEW_MAX_PX)
            )
    finally:
        Path(staging).unlink(missing_ok=True)
    return _validated(dst) | {
        "kind": "rgb",
        "bands": wanted,
        "stretch": {role: list(limits[role]) for role in RGB_BANDS},
        "preview": preview_facts,
    }
