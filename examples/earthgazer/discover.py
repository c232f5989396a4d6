"""EarthGazer's discover step: search a STAC API for captures and turn their bands into files.

`discover_captures` returns plain JSON-able dicts, so a capture travels as a task argument or
result as is; `download_files` gives the `files` of a Downlink download job for one capture.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from pystac_client import Client
from pystac_client.exceptions import APIError

from downlink import Permanent

if TYPE_CHECKING:
    import pystac

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

STAC_TIMEOUT_S = 30.0
# A multihash of SHA-256 is its code 0x12 and digest length 0x20, then the 32 digest bytes.
SHA256_MULTIHASH = re.compile(r"^1220([0-9a-fA-F]{64})$")
# A 4xx other than these will answer the same to a retry.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def discover_captures(
    stac_url: str,
    *,
    collection: str,
    bbox: Sequence[float],
    datetime: str | None,
    max_cloud_cover: float | None,
    bands: Sequence[str],
) -> list[dict[str, Any]]:
    """The captures of `collection` over `bbox` in `datetime`, oldest first.

    Args:
        bbox: WGS84 (west, south, east, north); a capture is kept if its bbox intersects it.
        datetime: an RFC 3339 instant or interval (`start/end`, `..` for an open end); None
            searches all time.
        max_cloud_cover: the highest `eo:cloud_cover` kept, in percent; None keeps every one.
        bands: the asset keys each capture must have; an item lacking one is skipped.
    """
    area = _checked_bbox(bbox)
    wanted = _checked_bands(bands)
    if not collection:
        raise Permanent("collection: must not be empty")
    if max_cloud_cover is not None and not 0 <= max_cloud_cover <= 100:
        raise Permanent(f"max_cloud_cover: must be 0 to 100, got {max_cloud_cover}")
    query = None if max_cloud_cover is None else {"eo:cloud_cover": {"lte": max_cloud_cover}}
    attributes = {"stac.url": stac_url, "stac.collection": collection}
    with tracer.start_as_current_span("earthgazer.discover", attributes=attributes) as span:
        items = _search(stac_url, collection, area, datetime, query)
        captures = [c for item in items if (c := capture_from_item(item, wanted)) is not None]
        captures.sort(key=lambda capture: capture["datetime"])
        span.set_attribute("earthgazer.items", len(items))
        span.set_attribute("earthgazer.captures", len(captures))
    logger.info(
        "discovered captures",
        extra={"collection": collection, "items": len(items), "captures": len(captures)},
    )
    return captures


def _search(
    stac_url: str,
    collection: str,
    bbox: list[float],
    datetime: str | None,
    query: dict[str, Any] | None,
) -> list[pystac.Item]:
    try:
        client = Client.open(stac_url, timeout=STAC_TIMEOUT_S)
        try:
            search = client.search(
                collections=[collection], bbox=bbox, datetime=datetime, query=query
            )
        except Exception as exc:  # pystac-client's complaint about a datetime: a bare Exception
            raise Permanent(f"datetime: {exc}") from exc
        return list(search.items())
    except APIError as exc:
        status = getattr(exc, "status_code", None)  # unset when no response came back
        if status is not None and 400 <= status < 500 and status not in RETRYABLE_STATUSES:
            message = f"the STAC API at {stac_url} refused the search ({status}): {exc}"
            raise Permanent(message) from exc
        raise


def capture_from_item(item: pystac.Item, bands: Sequence[str]) -> dict[str, Any] | None:
    """The capture an Item describes, or None (logged) when it lacks one of `bands`."""
    missing = [band for band in bands if band not in item.assets]
    if missing:
        logger.warning(
            "skipping a capture without every band",
            extra={"capture_id": item.id, "missing_bands": missing},
        )
        return None
    properties = item.properties
    when = item.datetime or item.common_metadata.start_datetime
    return {
        "id": item.id,
        "datetime": when.isoformat().replace("+00:00", "Z") if when else None,
        "cloud_cover": properties.get("eo:cloud_cover"),
        "bbox": list(item.bbox) if item.bbox is not None else None,
        "crs": _crs(properties),
        "bands": {band: _band(item.id, band, item.assets[band].to_dict()) for band in bands},
    }


def _crs(properties: Mapping[str, Any]) -> str | None:
    if isinstance(code := properties.get("proj:code"), str):
        return code
    if isinstance(epsg := properties.get("proj:epsg"), int):
        return f"EPSG:{epsg}"
    return None


def _band(capture_id: str, band: str, asset: Mapping[str, Any]) -> dict[str, Any]:
    checksum = asset.get("file:checksum")
    sha256 = None
    if isinstance(checksum, str):
        if match := SHA256_MULTIHASH.match(checksum):
            sha256 = match.group(1).lower()
        else:
            # Another hash function's multihash: the download goes on unverified.
            logger.warning(
                "ignoring a checksum that is not SHA-256",
                extra={"capture_id": capture_id, "band": band, "checksum": checksum},
            )
    size = asset.get("file:size")
    return {"url": asset["href"], "sha256": sha256, "size": size if isinstance(size, int) else None}


def band_filename(capture_id: str, band: str) -> str:
    """The name a capture's band file is stored under in a download job."""
    return f"{capture_id}_{band}.tif"


def download_files(capture: Mapping[str, Any]) -> list[dict[str, str]]:
    """The `files` of a download job for `capture`'s bands, verified where a checksum is known."""
    files = []
    for band, asset in capture["bands"].items():
        file = {"url": asset["url"], "filename": band_filename(capture["id"], band)}
        if asset.get("sha256"):
            file["sha256"] = asset["sha256"]
        files.append(file)
    return files


def _checked_bbox(bbox: Sequence[float]) -> list[float]:
    if len(bbox) != 4:
        raise Permanent(f"bbox: expected (west, south, east, north), got {len(bbox)} numbers")
    west, south, east, north = (float(v) for v in bbox)
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise Permanent(f"bbox: not a WGS84 (west, south, east, north) box: {list(bbox)}")
    return [west, south, east, north]


def _checked_bands(bands: Sequence[str]) -> list[str]:
    if isinstance(bands, str) or not bands:
        raise Permanent("bands: expected a non-empty list of asset keys, e.g. ['B04', 'B08']")
    if len(set(bands)) != len(bands):
        raise Permanent(f"bands: listed twice: {sorted({b for b in bands if bands.count(b) > 1})}")
    return list(bands)
