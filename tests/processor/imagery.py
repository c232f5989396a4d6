"""Small real rasters for tests: Sentinel-2-like bands with known pixel values (rasterio)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

# UTM zone 33N, 10 m pixels: like a Sentinel-2 tile corner over central Europe.
UTM_CRS = "EPSG:32633"
ORIGIN = (600_000.0, 5_000_000.0)
PIXEL_M = 10.0
SIZE = 512
NODATA = 0
# Base reflectance (x10000) of each band; every pixel adds a pattern on top (see band_values).
BASES = {"B02": 500, "B03": 800, "B04": 1000, "B08": 3000}


def band_values(name: str, size: int = SIZE) -> NDArray[np.uint16]:
    """The pixels of band `name`: base + (row * 7 + col * 3) % 997, and a no-data square."""
    rows, cols = np.indices((size, size))
    data = (BASES[name] + (rows * 7 + cols * 3) % 997).astype(np.uint16)
    data[:16, :16] = NODATA  # the top-left corner has no data in every band
    return data


def write_band(
    path: Path,
    data: NDArray[Any],
    *,
    crs: str = UTM_CRS,
    origin: tuple[float, float] = ORIGIN,
    pixel: float = PIXEL_M,
    nodata: float | None = NODATA,
    **profile: Any,
) -> Path:
    """Write `data` (bands first, or one 2-D band) as a GeoTIFF at `path`."""
    stack = data if data.ndim == 3 else data[np.newaxis]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=stack.shape[2],
        height=stack.shape[1],
        count=stack.shape[0],
        dtype=str(stack.dtype),
        crs=crs,
        transform=from_origin(origin[0], origin[1], pixel, pixel),
        nodata=nodata,
        **profile,
    ) as dataset:
        dataset.write(stack)
    return path


def write_sentinel_bands(folder: Path, size: int = SIZE) -> dict[str, Path]:
    """B02, B03, B04 and B08 as uint16 GeoTIFFs in `folder`, keyed by band name."""
    folder.mkdir(parents=True, exist_ok=True)
    return {name: write_band(folder / f"{name}.tif", band_values(name, size)) for name in BASES}


# --- a small capture in UTM zone 14N (the US Great Plains), for stacks and time series ------

CAPTURE_CRS = "EPSG:32614"
CAPTURE_ORIGIN = (500_000.0, 4_000_000.0)
CAPTURE_SHAPE = (48, 64)  # rows, columns at 10 m
# Not 0: dark pixels stay data, so NDVI's "both bands zero" rule is tested apart from no data.
CAPTURE_NODATA = 65535
CAPTURE_BANDS = {"B02": 10.0, "B03": 10.0, "B04": 10.0, "B08": 10.0, "B11": 20.0}
# Pixels (row, col) where red and NIR are both 0 in every capture.
DARK_PIXELS = ((20, 30), (21, 30), (40, 12))


def capture_values(name: str, seed: int = 0) -> NDArray[np.uint16]:
    """Band `name` of capture `seed` at its own resolution: fixed random reflectances, a few
    no-data pixels per band, and DARK_PIXELS zero in red and NIR."""
    scale = round(CAPTURE_BANDS[name] / 10.0)
    shape = (CAPTURE_SHAPE[0] // scale, CAPTURE_SHAPE[1] // scale)
    rng = np.random.default_rng([seed, list(CAPTURE_BANDS).index(name)])
    low, high = (1500, 6000) if name == "B08" else (100, 3000)
    data = rng.integers(low, high, size=shape, dtype=np.uint16)
    rows, cols = rng.integers(0, shape[0], 6), rng.integers(0, shape[1], 6)
    data[rows, cols] = CAPTURE_NODATA
    if name in ("B04", "B08"):
        for row, col in DARK_PIXELS:
            data[row, col] = 0
    return data


def write_capture(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The bands of capture `seed` as uint16 GeoTIFFs in `folder` (B11 at 20 m), by name."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        name: write_band(
            folder / f"{name}.tif",
            capture_values(name, seed),
            crs=CAPTURE_CRS,
            origin=CAPTURE_ORIGIN,
            pixel=pixel,
            nodata=CAPTURE_NODATA,
        )
        for name, pixel in CAPTURE_BANDS.items()
    }


def upsampled(name: str, seed: int = 0) -> NDArray[np.uint16]:
    """Band `name` of capture `seed` on the 10 m grid, each coarse pixel repeated."""
    scale = round(CAPTURE_BANDS[name] / 10.0)
    data = capture_values(name, seed)
    return np.repeat(np.repeat(data, scale, axis=0), scale, axis=1)


def wgs84_box(
    col0: float, row0: float, col1: float, row1: float
) -> tuple[float, float, float, float]:
    """The WGS84 (west, south, east, north) of a rectangle of capture pixels, by its corners
    (fractional: corners mid-pixel keep the expected window clear of rounding at pixel edges)."""
    to_wgs84 = Transformer.from_crs(CAPTURE_CRS, "EPSG:4326", always_xy=True)
    west, north = CAPTURE_ORIGIN
    lon_w, lat_n = to_wgs84.transform(west + col0 * 10.0, north - row0 * 10.0)
    lon_e, lat_s = to_wgs84.transform(west + col1 * 10.0, north - row1 * 10.0)
    return (lon_w, lat_s, lon_e, lat_n)


def covering_window(
    bounds: tuple[float, float, float, float],
    *,
    crs: str = CAPTURE_CRS,
    origin: tuple[float, float] = CAPTURE_ORIGIN,
    shape: tuple[int, int] = CAPTURE_SHAPE,
) -> tuple[slice, slice]:
    """(rows, cols) of the capture's 10 m pixels the bbox touches: its densified footprint in
    UTM, out to whole pixels, clipped to the capture (this module's, or one given)."""
    lon_w, lat_s, lon_e, lat_n = bounds
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    along = np.linspace(0.0, 1.0, 64)
    lons_across = lon_w + along * (lon_e - lon_w)
    lats_across = lat_s + along * (lat_n - lat_s)
    edges = [
        (lons_across, np.full(64, lat_s)),  # south
        (lons_across, np.full(64, lat_n)),  # north
        (np.full(64, lon_w), lats_across),  # west
        (np.full(64, lon_e), lats_across),  # east
    ]
    xs, ys = to_utm.transform(
        np.concatenate([lons for lons, _ in edges]), np.concatenate([lats for _, lats in edges])
    )
    west, north = origin
    col0 = max(0, math.floor((min(xs) - west) / 10.0))
    col1 = min(shape[1], math.ceil((max(xs) - west) / 10.0))
    row0 = max(0, math.floor((north - max(ys)) / 10.0))
    row1 = min(shape[0], math.ceil((north - min(ys)) / 10.0))
    return slice(row0, row1), slice(col0, col1)
