"""The STAC ItemCollection and the manifest: valid STAC offline, footprints, artifacts, hrefs."""

from __future__ import annotations

import json
import time

import pystac
import pytest
from pystac.extensions.file import FileExtension

from services.exporter.archive import Written
from services.exporter.manifest import build_manifest, metadata_files
from services.exporter.stac import item_collection, multihash, wgs84_bbox
from shared.events import ExportItem
from shared.ids import JobId
from tests.exporter.conftest import JOB, build_command
from tests.exporter.stac_validation import OfflineValidator, validate_item_collection

SHA = "ab" * 32
RASTER_METADATA = {
    "type": "raster",
    "crs": "EPSG:32632",
    "epsg": 32632,
    "bounds": [600000.0, 5090220.0, 709800.0, 5200020.0],
    "bounds_wgs84": [10.31, 45.95, 11.74, 46.95],
    "width": 10980,
    "height": 10980,
}


def _file(name: str, *, metadata: dict[str, object] | None = None, index: int = 1) -> ExportItem:
    return ExportItem(
        file_id=f"{index:08d}-aaaa-4aaa-8aaa-aaaaaaaaaaaa",
        job_id=JOB,
        filepath=f"u/{JOB}/{name}",
        arcname=f"{JOB}/{name}",
        size=1000 + index,
        sha256=SHA,
        url=f"https://example.com/{name}",
        metadata=metadata,
    )


def _artifact(kind: str, name: str, source: ExportItem | None, index: int) -> ExportItem:
    return ExportItem(
        file_id=f"{index:08d}-bbbb-4bbb-8bbb-bbbbbbbbbbbb",
        job_id=JOB,
        filepath=f"u/{JOB}/artifacts/{name}",
        arcname=f"{JOB}/artifacts/{name}",
        size=500,
        sha256="cd" * 32,
        kind=kind,
        source_file_id=source.file_id if source else None,
        metadata={"bounds_wgs84": [10.5, 46.0, 11.0, 46.5]} if source is None else None,
    )


def test_each_file_is_an_item_with_checksum_size_and_a_relative_href() -> None:
    files = [_file("B04.tif", metadata=RASTER_METADATA), _file("notes.csv", index=2)]
    collection = item_collection(build_command(files), {}, built_at=time.time())

    items = validate_item_collection(collection)
    assert [item.id for item in items] == [f.file_id for f in files]
    raster = items[0]
    asset = raster.assets["data"]
    assert asset.href == f"./{JOB}/B04.tif"
    assert asset.media_type == pystac.MediaType.GEOTIFF
    assert FileExtension.ext(asset).checksum == "1220" + SHA
    assert FileExtension.ext(asset).size == 1001
    assert raster.bbox == [10.31, 45.95, 11.74, 46.95]
    assert raster.geometry is not None
    assert raster.geometry["type"] == "Polygon"
    assert raster.properties["downlink:source_url"] == "https://example.com/B04.tif"
    assert raster.properties["downlink:epsg"] == 32632
    # Without a footprint: a null geometry and no bbox, which STAC allows.
    assert items[1].geometry is None
    assert items[1].bbox is None
    # Dated by the job when the metadata names no acquisition time.
    assert items[1].datetime is not None
    assert items[1].datetime.isoformat().startswith("2026-11-20")


def test_artifacts_are_assets_of_their_file_and_composites_items_of_their_own() -> None:
    scene = _file("B04.tif", metadata=RASTER_METADATA)
    thumbnail = _artifact("thumbnail", "B04_thumb.png", scene, 1)
    cog = _artifact("cog", "B04_cog.tif", scene, 2)
    ndvi = _artifact("ndvi", "ndvi.tif", None, 3)
    collection = item_collection(build_command([scene, thumbnail, cog, ndvi]), {}, built_at=0.0)

    items = validate_item_collection(collection)
    assert [item.id for item in items] == [scene.file_id, ndvi.file_id]
    assets = items[0].assets
    assert set(assets) == {"data", "thumbnail", "cog"}
    assert assets["thumbnail"].roles == ["thumbnail"]
    assert assets["thumbnail"].media_type == pystac.MediaType.PNG
    assert assets["cog"].media_type == pystac.MediaType.COG
    assert items[1].bbox == [10.5, 46.0, 11.0, 46.5]


def test_digests_computed_while_writing_win_over_recorded_ones() -> None:
    scene = _file("B04.tif")
    digests = {scene.arcname: "ef" * 32}
    collection = item_collection(build_command([scene]), digests, built_at=0.0)
    asset = collection["features"][0]["assets"]["data"]
    assert asset["file:checksum"] == multihash("ef" * 32)


def test_a_footprint_comes_only_from_wgs84_metadata() -> None:
    assert wgs84_bbox({"bounds_wgs84": [1, 2, 3, 4]}) == (1.0, 2.0, 3.0, 4.0)
    assert wgs84_bbox({"bbox": {"west": 1, "south": 2, "east": 3, "north": 4}}) is not None
    assert wgs84_bbox({"crs": "EPSG:4326", "bounds": [1, 2, 3, 4]}) == (1.0, 2.0, 3.0, 4.0)
    # Projected bounds are not longitudes and latitudes.
    assert wgs84_bbox({"crs": "EPSG:32632", "bounds": [600000, 5090220, 709800, 5200020]}) is None
    assert wgs84_bbox({"bounds_wgs84": [0, 95, 1, 96]}) is None  # not on Earth
    assert wgs84_bbox({"bounds_wgs84": [float("nan"), 1, 2, 3]}) is None
    assert wgs84_bbox({}) is None


def test_the_offline_validator_refuses_a_broken_item() -> None:
    collection = item_collection(build_command([_file("B04.tif")]), {}, built_at=0.0)
    feature = collection["features"][0]
    feature["assets"]["data"]["file:size"] = -1
    with pytest.raises(pystac.STACValidationError):
        pystac.validation.validate_dict(feature, validator=OfflineValidator())
    del feature["assets"]["data"]["file:size"]
    feature["properties"].pop("datetime")
    with pytest.raises(pystac.STACValidationError):
        pystac.validation.validate_dict(feature, validator=OfflineValidator())


def test_the_manifest_lists_jobs_files_and_artifacts_with_provenance() -> None:
    scene = _file("B04.tif", metadata=RASTER_METADATA)
    thumbnail = _artifact("thumbnail", "B04_thumb.png", scene, 1)
    command = build_command([scene, thumbnail], "tar.gz")
    manifest = build_manifest(command, {}, built_at=0.0)

    assert manifest["export_id"] == command.export_id
    assert manifest["format"] == "tar.gz"
    assert manifest["jobs"][0]["job_id"] == JOB
    assert manifest["files"] == [
        {
            "path": scene.arcname,
            "job_id": JOB,
            "size": scene.size,
            "sha256": SHA,
            "file_id": scene.file_id,
            "url": scene.url,
            "metadata": RASTER_METADATA,
        }
    ]
    assert manifest["artifacts"][0]["kind"] == "thumbnail"
    assert manifest["artifacts"][0]["source_file_id"] == scene.file_id
    assert manifest["totals"] == {"files": 1, "artifacts": 1, "bytes": scene.size + 500}


def test_metadata_files_come_in_order_and_sums_cover_manifest_and_stac() -> None:
    scene = _file("B04.tif")
    files = metadata_files(
        build_command([scene]), [Written(scene.arcname, scene.size, SHA)], built_at=0.0
    )
    assert [name for name, _ in files] == ["manifest.json", "stac-items.json", "SHA256SUMS"]
    sums = files[2][1].decode().splitlines()
    assert [line.split("  ", 1)[1] for line in sums] == [
        scene.arcname,
        "manifest.json",
        "stac-items.json",
    ]
    assert json.loads(files[0][1])["files"][0]["path"] == scene.arcname
    assert JobId(JOB) == scene.job_id
