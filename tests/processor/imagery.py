"""Small real rasters for tests: Sentinel-2-like bands with known pixel values (rasterio)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
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
