"""Sentinel-2-like test captures: four small uint16 GeoTIFF bands each (rasterio), with known
pixels, and the STAC Item that describes them (projection, eo, file extensions).

`default_captures(root)` writes the catalogue `StacServer` serves. Searched with the collection
`sentinel-2-l2a`, `AOI_BBOX`, `SEARCH_DATETIME` and at most 20 % cloud, exactly `MATCHING_IDS`
come back, and `MISSING_B08_ID` too, which lacks a B08 asset; every other capture is left out by
one filter (named in its id's comment below).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform, transform_bounds

if TYPE_CHECKING:
    from pathlib import Path

    from affine import Affine
    from numpy.typing import NDArray

EPSG = 32614  # UTM zone 14N: a tile over Kansas
CRS = f"EPSG:{EPSG}"
WIDTH_PX = 64
HEIGHT_PX = 48
PIXEL_M = 10.0
NODATA = 0
BANDS = ("B02", "B03", "B04", "B08")
BASES = {"B02": 400, "B03": 700, "B04": 1000, "B08": 2000}
SENTINEL_COLLECTION = "sentinel-2-l2a"
LANDSAT_COLLECTION = "landsat-c2-l2"
MAIN_ORIGIN = (500_000.0, 4_300_000.0)  # UTM upper-left corner of the tile most captures share
EAST_ORIGIN = (560_000.0, 4_300_000.0)  # 60 km east: outside AOI_BBOX


def wgs84_bbox(
    left: float, bottom: float, right: float, top: float
) -> tuple[float, float, float, float]:
    """A `CRS` rectangle's WGS84 (west, south, east, north), rounded to about a centimetre."""
    west, south, east, north = transform_bounds(CRS, "EPSG:4326", left, bottom, right, top)
    return round(west, 7), round(south, 7), round(east, 7), round(north, 7)


# A UTM rectangle about 100 m inside the main tile on every side.
AOI_BBOX = wgs84_bbox(500_100, 4_299_620, 500_540, 4_299_900)
SEARCH_DATETIME = "2024-06-01T00:00:00Z/2024-07-31T23:59:59Z"
MAX_CLOUD_COVER = 20.0

MATCHING_IDS = (
    "S2B_14SNJ_20240603_0_L2A",
    "S2A_14SNJ_20240613_0_L2A",  # its assets carry no file:checksum nor file:size
    "S2B_14SNJ_20240628_0_L2A",
)
MISSING_B08_ID = "S2A_14SNJ_20240708_0_L2A"


@dataclass(frozen=True, kw_only=True)
class Capture:
    """One written capture: its metadata, the pixels of each band and the files holding them."""

    id: str
    collection: str
    datetime: datetime
    cloud_cover: float
    origin: tuple[float, float]
    arrays: dict[str, NDArray[np.uint16]]
    paths: dict[str, Path]
    checksums: bool  # whether the STAC Item gives file:checksum and file:size

    @property
    def transform(self) -> Affine:
        """The pixel-to-UTM transform every band shares."""
        affine: Affine = from_origin(self.origin[0], self.origin[1], PIXEL_M, PIXEL_M)
        return affine

    @property
    def utm_bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the capture's CRS."""
        left, top = self.origin
        return left, top - HEIGHT_PX * PIXEL_M, left + WIDTH_PX * PIXEL_M, top

    @property
    def bbox(self) -> list[float]:
        """The WGS84 bounding box of the raster."""
        return list(wgs84_bbox(*self.utm_bounds))

    def sha256(self, band: str) -> str:
        """Hex SHA-256 of the band's file."""
        return hashlib.sha256(self.paths[band].read_bytes()).hexdigest()

    def item(self, base_url: str) -> dict[str, Any]:
        """The STAC Item, with asset hrefs under `base_url`/assets/."""
        left, bottom, right, top = self.utm_bounds
        lons, lats = transform(
            CRS, "EPSG:4326", [left, right, right, left], [top, top, bottom, bottom]
        )
        ring = [[round(x, 7), round(y, 7)] for x, y in zip(lons, lats, strict=True)]
        return {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [
                "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            ],
            "id": self.id,
            "collection": self.collection,
            "bbox": self.bbox,
            "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
            "properties": {
                "datetime": self.datetime.isoformat().replace("+00:00", "Z"),
                "eo:cloud_cover": self.cloud_cover,
                "proj:code": CRS,
                "proj:epsg": EPSG,
                "proj:shape": [HEIGHT_PX, WIDTH_PX],
                "proj:transform": list(self.transform)[:6],
            },
            "assets": {band: self._asset(base_url, band) for band in self.paths},
            "links": [],
        }

    def _asset(self, base_url: str, band: str) -> dict[str, Any]:
        asset: dict[str, Any] = {
            "href": f"{base_url}/assets/{self.id}/{band}.tif",
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
            "eo:bands": [{"name": band}],
        }
        if self.checksums:
            asset["file:checksum"] = "1220" + self.sha256(band)
            asset["file:size"] = self.paths[band].stat().st_size
        return asset


def band_values(band: str, index: int) -> NDArray[np.uint16]:
    """Pixels of `band` in the capture numbered `index`: a base, a gradient and a no-data corner.

    NIR (B08) grows by 300 per capture, so NDVI rises from one date to the next; the top-left
    2*(index+1) x 8 pixels are NODATA in every band, so valid-pixel shares differ too.
    """
    rows, cols = np.indices((HEIGHT_PX, WIDTH_PX))
    step = 300 * index if band == "B08" else 20 * index
    data = (BASES[band] + step + (rows * 5 + cols * 3) % 200).astype(np.uint16)
    data[: 2 * (index + 1), :8] = NODATA
    return data


def write_band(path: Path, data: NDArray[np.uint16], origin: tuple[float, float]) -> Path:
    """Write one band as a single-band uint16 GeoTIFF in `CRS`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=WIDTH_PX,
        height=HEIGHT_PX,
        count=1,
        dtype="uint16",
        crs=CRS,
        transform=from_origin(origin[0], origin[1], PIXEL_M, PIXEL_M),
        nodata=NODATA,
    ) as dataset:
        dataset.write(data, 1)
    return path


def write_capture(
    root: Path,
    capture_id: str,
    when: datetime,
    cloud_cover: float,
    *,
    index: int,
    collection: str = SENTINEL_COLLECTION,
    origin: tuple[float, float] = MAIN_ORIGIN,
    bands: tuple[str, ...] = BANDS,
    checksums: bool = True,
) -> Capture:
    """Write a capture's bands to `root/capture_id/{band}.tif` and describe them."""
    arrays = {band: band_values(band, index) for band in bands}
    paths = {
        band: write_band(root / capture_id / f"{band}.tif", data, origin)
        for band, data in arrays.items()
    }
    return Capture(
        id=capture_id,
        collection=collection,
        datetime=when,
        cloud_cover=cloud_cover,
        origin=origin,
        arrays=arrays,
        paths=paths,
        checksums=checksums,
    )


def default_captures(root: Path) -> list[Capture]:
    """The test catalogue, written under `root`; see the module docstring for what matches."""

    def at(year: int, month: int, day: int) -> datetime:
        return datetime(year, month, day, 17, 15, 21, tzinfo=UTC)

    return [
        write_capture(root, MATCHING_IDS[0], at(2024, 6, 3), 4.2, index=0),
        write_capture(root, MATCHING_IDS[1], at(2024, 6, 13), 12.5, index=1, checksums=False),
        write_capture(root, MATCHING_IDS[2], at(2024, 6, 28), 8.0, index=2),
        # Too cloudy.
        write_capture(root, "S2B_14SNJ_20240623_0_L2A", at(2024, 6, 23), 55.0, index=3),
        # Outside AOI_BBOX.
        write_capture(
            root, "S2B_14SPJ_20240618_0_L2A", at(2024, 6, 18), 2.0, index=4, origin=EAST_ORIGIN
        ),
        # Outside SEARCH_DATETIME.
        write_capture(root, "S2A_14SNJ_20230610_0_L2A", at(2023, 6, 10), 3.0, index=5),
        # Another collection.
        write_capture(
            root,
            "LC09_L2SP_029033_20240610",
            at(2024, 6, 10),
            1.0,
            index=6,
            collection=LANDSAT_COLLECTION,
        ),
        write_capture(root, MISSING_B08_ID, at(2024, 7, 8), 1.0, index=7, bands=BANDS[:3]),
    ]
