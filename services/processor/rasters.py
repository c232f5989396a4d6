"""Raster mechanics on rasterio/GDAL: decimated reads, percentile stretches, one common grid.

Everything here runs inside a pool worker. Reads are bounded: a quicklook reads through GDAL's
overviews or a decimated RasterIO, composites stream in strips, so no raster is loaded whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

if TYPE_CHECKING:
    from affine import Affine
    from numpy.typing import NDArray
    from rasterio.crs import CRS
    from rasterio.io import DatasetReader

# Percentiles of a 16-bit or float band mapped onto 1..255; 0 stays for "no data".
STRETCH_PERCENTILES = (2.0, 98.0)
# Rows per strip when a composite streams its bands: bounded memory whatever the raster size.
STRIP_ROWS = 512
# A quicklook without overviews samples this many source pixels per output pixel and side.
SUPERSAMPLE = 4
WGS84 = "EPSG:4326"


class ProcessingError(Exception):
    """A step cannot make its output from this input (corrupt, not a raster, no overlap...).

    It is the file's fault, not the worker's: the step fails with this message, without retry.
    """


def out_shape(width: int, height: int, max_px: int) -> tuple[int, int]:
    """(height, width) scaled so the long side is at most `max_px`; never scaled up."""
    scale = min(1.0, max_px / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def display_bands(dataset: DatasetReader) -> list[int]:
    """The bands a quicklook shows: red, green, blue by colour interpretation, else 1-2-3 or 1."""
    interp = list(dataset.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(colour in interp for colour in wanted):
        return [interp.index(colour) + 1 for colour in wanted]
    return [1, 2, 3] if dataset.count >= 3 else [1]


def read_decimated(
    dataset: DatasetReader | WarpedVRT,
    indexes: Sequence[int],
    shape: tuple[int, int],
    *,
    window: Window | None = None,
    resampling: Resampling = Resampling.average,
) -> np.ma.MaskedArray[Any, Any]:
    """`indexes` read at `shape` (height, width); GDAL picks the nearest overview if any."""
    data: np.ma.MaskedArray[Any, Any] = dataset.read(
        list(indexes),
        out_shape=(len(indexes), *shape),
        window=window,
        resampling=resampling,
        masked=True,
    )
    return data


def read_quicklook(
    dataset: DatasetReader, indexes: Sequence[int], shape: tuple[int, int]
) -> np.ma.MaskedArray[Any, Any]:
    """`indexes` at `shape` for a quicklook, never reading the raster whole into memory.

    With overviews GDAL averages from the nearest one. Without, an averaging read would make
    GDAL average every source pixel (seconds for a large raster); a nearest read at up to
    SUPERSAMPLE times the size, box-averaged down here, costs a fraction and barely aliases.
    """
    if dataset.overviews(indexes[0]):
        return read_decimated(dataset, indexes, shape)
    height, width = shape
    factor = max(1, min(SUPERSAMPLE, dataset.height // height, dataset.width // width))
    if factor == 1:
        return read_decimated(dataset, indexes, shape)
    fine = read_decimated(
        dataset, indexes, (height * factor, width * factor), resampling=Resampling.nearest
    )
    blocks = fine.reshape(len(indexes), height, factor, width, factor)
    # A masked mean: no-data pixels do not count; a block of only no data stays no data.
    averaged: np.ma.MaskedArray[Any, Any] = blocks.mean(axis=(2, 4))
    return averaged


def percentile_limits(band: np.ma.MaskedArray[Any, Any]) -> tuple[float, float]:
    """The stretch limits of one band: its 2nd and 98th percentiles over valid pixels."""
    valid = band.compressed()
    if valid.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(valid, STRETCH_PERCENTILES)
    if not high > low:
        # A flat band: any range that puts its value in the middle of the scale.
        return float(low) - 1.0, float(low) + 1.0
    return float(low), float(high)


def to_uint8(band: np.ma.MaskedArray[Any, Any], low: float, high: float) -> NDArray[np.uint8]:
    """Linear stretch of `band` from [low, high] onto 1..255; masked pixels become 0."""
    data = np.ma.getdata(band).astype(np.float64)
    scaled = np.clip((data - low) / (high - low) * 254.0 + 1.0, 1.0, 255.0)
    out = np.rint(scaled).astype(np.uint8)
    out[np.ma.getmaskarray(band)] = 0
    return out


def needs_stretch(dtype: str) -> bool:
    """8-bit data is shown as it is; wider integers and floats are stretched."""
    return np.dtype(dtype) != np.uint8


@dataclass(frozen=True, slots=True)
class Grid:
    """A pixel grid: the output of a composite, to which every band is aligned."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    def strips(self, rows: int = STRIP_ROWS) -> Iterator[Window]:
        """Full-width windows of `rows` rows covering the grid top to bottom."""
        for row in range(0, self.height, rows):
            yield Window(0, row, self.width, min(rows, self.height - row))


def check_bounds(bounds: tuple[float, float, float, float]) -> None:
    """Raise ProcessingError unless `bounds` is a WGS84 (west, south, east, north) box."""
    if len(bounds) == 4 and all(isinstance(edge, int | float) for edge in bounds):
        west, south, east, north = bounds
        if -180 <= west < east <= 180 and -90 <= south < north <= 90:
            return
    raise ProcessingError(
        f"bounds must be (west, south, east, north) in WGS84 degrees with west < east and "
        f"south < north; got {list(bounds)}"
    )


def reference_grid(
    dataset: DatasetReader, bounds: tuple[float, float, float, float] | None
) -> Grid:
    """The grid of `dataset`, cropped to the WGS84 `bounds` (west, south, east, north) if given.

    The crop keeps whole pixels: the smallest window of the dataset's grid covering the bbox.
    """
    if dataset.crs is None:
        raise ProcessingError("the reference band has no CRS, so bands cannot be aligned")
    full = Window(0, 0, dataset.width, dataset.height)
    if bounds is None:
        return Grid(dataset.crs, dataset.transform, dataset.width, dataset.height)
    check_bounds(bounds)
    native = transform_bounds(WGS84, dataset.crs, *bounds, densify_pts=21)
    if not all(math.isfinite(edge) for edge in native):
        # Far outside the CRS's area of use (the other side of the globe): no overlap.
        raise ProcessingError(_no_overlap(bounds, dataset))
    wanted = from_bounds(*native, transform=dataset.transform)
    col_off = max(0, math.floor(wanted.col_off + 1e-9))
    row_off = max(0, math.floor(wanted.row_off + 1e-9))
    col_end = min(full.width, math.ceil(wanted.col_off + wanted.width - 1e-9))
    row_end = min(full.height, math.ceil(wanted.row_off + wanted.height - 1e-9))
    if col_end <= col_off or row_end <= row_off:
        raise ProcessingError(_no_overlap(bounds, dataset))
    window = Window(col_off, row_off, col_end - col_off, row_end - row_off)
    return Grid(
        dataset.crs, dataset.window_transform(window), int(window.width), int(window.height)
    )


def _no_overlap(bounds: tuple[float, float, float, float], dataset: DatasetReader) -> str:
    extent = transform_bounds(dataset.crs, WGS84, *dataset.bounds, densify_pts=21)
    rounded = [round(edge, 6) for edge in extent]
    return f"bounds {list(bounds)} do not overlap the bands, whose extent is {rounded} (WGS84)"


class AlignedBand:
    """One band read on a target grid: windows of its own file when the grids line up (exact,
    fast), else through a WarpedVRT that reprojects and resamples (bilinear unless told) onto
    the grid."""

    def __init__(
        self,
        dataset: DatasetReader,
        grid: Grid,
        band: int = 1,
        *,
        resampling: Resampling = Resampling.bilinear,
    ) -> None:
        self._band = band
        self.dataset = dataset
        self.nodata = dataset.nodata
        self._offset = _pixel_offset(dataset, grid)
        self._vrt: WarpedVRT | None = None
        if self._offset is None:
            self._vrt = WarpedVRT(
                dataset,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=resampling,
                # Pixels outside the band's footprint must read as no data, not as zeros.
                add_alpha=dataset.nodata is None,
            )

    @property
    def reprojected(self) -> bool:
        return self._vrt is not None

    def read(
        self, window: Window, *, shape: tuple[int, int] | None = None
    ) -> np.ma.MaskedArray[Any, Any]:
        """The band's pixels under `window` of the grid (decimated to `shape` if given)."""
        kwargs: dict[str, Any] = {"masked": True}
        if shape is not None:
            kwargs |= {"out_shape": shape, "resampling": Resampling.average}
        if self._vrt is not None:
            data: np.ma.MaskedArray[Any, Any] = self._vrt.read(self._band, window=window, **kwargs)
            return data
        col, row = self._offset or (0, 0)
        shifted = Window(window.col_off + col, window.row_off + row, window.width, window.height)
        data = self.dataset.read(self._band, window=shifted, boundless=True, **kwargs)
        return data

    def close(self) -> None:
        if self._vrt is not None:
            self._vrt.close()


def _pixel_offset(dataset: DatasetReader, grid: Grid) -> tuple[int, int] | None:
    """(col, row) of the grid's origin in `dataset` when both share CRS, pixel size and
    pixel edges; None when the band must be warped."""
    if dataset.crs != grid.crs:
        return None
    src, dst = dataset.transform, grid.transform
    if not (src.b == dst.b == 0 and src.d == dst.d == 0):
        return None
    if not (math.isclose(src.a, dst.a, rel_tol=1e-9) and math.isclose(src.e, dst.e, rel_tol=1e-9)):
        return None
    col = (dst.c - src.c) / src.a
    row = (dst.f - src.f) / src.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(col), round(row)


def open_raster(path: str) -> DatasetReader:
    """Open `path` with GDAL, or raise ProcessingError with GDAL's own words."""
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        # GDAL names the scratch path; people know the file by its name only.
        message = str(exc).replace(path, Path(path).name)
        raise ProcessingError(f"not a readable raster: {message}") from None
