"""The STAC ItemCollection of an export: one Item per downloaded file, its artifacts as assets.

Hrefs are relative to the collection's place at the archive's root, so the extracted folder is
a self-contained STAC dataset; each asset carries `file:checksum` (a SHA-256 multihash) and
`file:size` from the File Info extension.
"""

from __future__ import annotations

import math
import mimetypes
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import pystac
from pystac.extensions.file import FileExtension

if TYPE_CHECKING:
    from collections.abc import Sequence

    from shared.events import BuildExport, ExportItem

STAC_NAME = "stac-items.json"
SHA256_MULTIHASH_PREFIX = "1220"  # multihash: code 0x12 (sha2-256), length 0x20 (32 bytes)

# Keys under which a file's metadata may give its footprint in WGS84 longitude/latitude.
_WGS84_BBOX_KEYS = ("bbox", "wgs84_bounds", "bounds_wgs84", "geographic_bounds", "lonlat_bounds")
_WGS84_CRS = {"EPSG:4326", "OGC:CRS84", "WGS84", "CRS84"}
_DATETIME_KEYS = ("datetime", "acquired", "acquisition_time", "sensing_time", "date")
_ROLES = {
    "file": ["data"],
    "cog": ["data", "cloud-optimized"],
    "thumbnail": ["thumbnail"],
    "rgb_preview": ["overview"],
    "ndvi": ["data"],
    "rgb": ["visual"],
}
_MEDIA_TYPES = {
    ".tif": pystac.MediaType.GEOTIFF,
    ".tiff": pystac.MediaType.GEOTIFF,
    ".jp2": pystac.MediaType.JPEG2000,
    ".png": pystac.MediaType.PNG,
    ".jpg": pystac.MediaType.JPEG,
    ".jpeg": pystac.MediaType.JPEG,
    ".json": pystac.MediaType.JSON,
    ".geojson": pystac.MediaType.GEOJSON,
    ".nc": "application/netcdf",
    ".zip": "application/zip",
}


def multihash(sha256_hex: str) -> str:
    """The `file:checksum` form of a hex SHA-256: a multihash, hex encoded."""
    return SHA256_MULTIHASH_PREFIX + sha256_hex.lower()


def item_collection(
    command: BuildExport, digests: Mapping[str, str], *, built_at: float
) -> dict[str, Any]:
    """The ItemCollection (a GeoJSON FeatureCollection) of the export's items.

    Args:
        digests: arcname -> SHA-256 of the bytes that went into the archive.
        built_at: Unix time of the build, the datetime of items nothing better dates.
    """
    job_times = {str(job.get("job_id")): _job_time(job) for job in command.jobs}
    fallback = datetime.fromtimestamp(built_at, tz=UTC)
    by_source: dict[str, list[ExportItem]] = {}
    for item in command.items:
        if item.kind != "file" and item.source_file_id is not None:
            by_source.setdefault(item.source_file_id, []).append(item)
    files = {item.file_id for item in command.items if item.kind == "file"}
    features: list[pystac.Item] = []
    for item in command.items:
        if item.kind != "file" and item.source_file_id in files:
            continue  # an asset of its file's Item, below
        stac_item = _item(item, job_times.get(item.job_id) or fallback)
        _add_asset(stac_item, "data" if item.kind == "file" else item.kind, item, digests)
        for artifact in by_source.get(item.file_id, []) if item.kind == "file" else []:
            _add_asset(stac_item, artifact.kind, artifact, digests)
        features.append(stac_item)
    collection: dict[str, Any] = pystac.ItemCollection(features).to_dict(transform_hrefs=False)
    return collection


def _item(item: ExportItem, default_time: datetime) -> pystac.Item:
    metadata = item.metadata or {}
    bbox = wgs84_bbox(metadata)
    geometry = metadata.get("geometry") if _is_geometry(metadata.get("geometry")) else None
    if geometry is None and bbox is not None:
        geometry = _polygon(bbox)
    if geometry is None:
        bbox = None  # STAC: a bbox is required with a geometry and forbidden without one
    properties: dict[str, Any] = {
        "title": PurePosixPath(item.arcname).name,
        "downlink:job_id": item.job_id,
        "downlink:kind": item.kind,
    }
    if item.url:
        properties["downlink:source_url"] = item.url
    for key in ("crs", "epsg", "width", "height", "band_count", "dtype"):
        if key in metadata and isinstance(metadata[key], str | int | float):
            properties[f"downlink:{key}"] = metadata[key]
    return pystac.Item(
        id=item.file_id,
        geometry=geometry,
        bbox=list(bbox) if bbox is not None else None,
        datetime=_metadata_time(metadata) or default_time,
        properties=properties,
    )


def _add_asset(
    stac_item: pystac.Item, key: str, item: ExportItem, digests: Mapping[str, str]
) -> None:
    unique = key
    number = 1
    while unique in stac_item.assets:
        number += 1
        unique = f"{key}_{number}"
    suffix = PurePosixPath(item.arcname.lower()).suffix
    media_type = (
        pystac.MediaType.COG
        if item.kind == "cog"
        else _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(item.arcname)[0]
    )
    stac_item.add_asset(
        unique,
        pystac.Asset(
            href=f"./{item.arcname}",
            title=PurePosixPath(item.arcname).name,
            media_type=media_type,
            roles=list(_ROLES.get(item.kind, ["data"])),
        ),
    )
    file_info = FileExtension.ext(stac_item.assets[unique], add_if_missing=True)
    file_info.size = item.size
    digest = digests.get(item.arcname) or item.sha256
    if digest:
        file_info.checksum = multihash(digest)


def wgs84_bbox(metadata: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """The file's footprint (west, south, east, north) in WGS84, when its metadata gives one."""
    for key in _WGS84_BBOX_KEYS:
        if (box := _bbox(metadata.get(key))) is not None:
            return box
    crs = str(metadata.get("crs") or "").upper()
    if crs in _WGS84_CRS or metadata.get("epsg") == 4326:
        return _bbox(metadata.get("bounds"))
    return None


def _bbox(value: Any) -> tuple[float, float, float, float] | None:
    if isinstance(value, Mapping):
        names = ("west", "south", "east", "north")
        value = [value.get(n) for n in names] if all(n in value for n in names) else None
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in value):
        return None
    west, south, east, north = (float(v) for v in value)
    inside = -180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90
    return (west, south, east, north) if inside else None


def _polygon(bbox: Sequence[float]) -> dict[str, Any]:
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}


def _is_geometry(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str) and "coordinates" in value


def _metadata_time(metadata: Mapping[str, Any]) -> datetime | None:
    for key in _DATETIME_KEYS:
        if isinstance(value := metadata.get(key), str):
            parsed = _parse_time(value)
            if parsed is not None:
                return parsed
    return None


def _job_time(job: Mapping[str, Any]) -> datetime | None:
    for key in ("finished_at", "created_at"):
        if isinstance(value := job.get(key), str) and (parsed := _parse_time(value)):
            return parsed
    return None


def _parse_time(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
