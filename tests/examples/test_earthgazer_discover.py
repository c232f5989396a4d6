"""EarthGazer's discover step against a real STAC API on loopback (tests/support/stac_server.py)."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pystac
import pytest
from pystac_client import Client

from downlink import Permanent
from examples.earthgazer.discover import capture_from_item, discover_captures, download_files
from services.gateway.jobs.specs import SubmitRequest
from tests.support.sentinel import (
    AOI_BBOX,
    BANDS,
    CRS,
    MATCHING_IDS,
    MAX_CLOUD_COVER,
    MISSING_B08_ID,
    SEARCH_DATETIME,
    SENTINEL_COLLECTION,
    default_captures,
)
from tests.support.stac_server import StacServer, stac_api

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["stac_api"]

WORLD = (-180.0, -90.0, 180.0, 90.0)
JUNE_3, JUNE_13, JUNE_28 = MATCHING_IDS
CLOUDY = "S2B_14SNJ_20240623_0_L2A"
EAST = "S2B_14SPJ_20240618_0_L2A"
LAST_YEAR = "S2A_14SNJ_20230610_0_L2A"


def discover(url: str, **overrides: Any) -> list[dict[str, Any]]:
    arguments: dict[str, Any] = {
        "collection": SENTINEL_COLLECTION,
        "bbox": AOI_BBOX,
        "datetime": SEARCH_DATETIME,
        "max_cloud_cover": MAX_CLOUD_COVER,
        "bands": BANDS,
        **overrides,
    }
    return discover_captures(url, **arguments)


def test_every_filter_together_gives_exactly_the_matching_captures(
    stac_api: StacServer,
) -> None:
    captures = discover(stac_api.url)

    assert [c["id"] for c in captures] == list(MATCHING_IDS)
    first = stac_api.capture(JUNE_3)
    assert captures[0] == {
        "id": JUNE_3,
        "datetime": "2024-06-03T17:15:21Z",
        "cloud_cover": 4.2,
        "bbox": first.bbox,
        "crs": CRS,
        "bands": {
            band: {
                "url": f"{stac_api.url}/assets/{JUNE_3}/{band}.tif",
                "sha256": first.sha256(band),
                "size": first.paths[band].stat().st_size,
            }
            for band in BANDS
        },
    }
    assert msgspec.json.decode(msgspec.json.encode(captures)) == captures  # JSON-able as is


@pytest.mark.parametrize(
    ("bbox", "datetime", "max_cloud_cover", "expected"),
    [
        pytest.param(WORLD, None, None, [LAST_YEAR, JUNE_3, JUNE_13, EAST, CLOUDY, JUNE_28],
                     id="collection-only"),
        pytest.param(AOI_BBOX, None, None, [LAST_YEAR, JUNE_3, JUNE_13, CLOUDY, JUNE_28],
                     id="bbox"),
        pytest.param(WORLD, SEARCH_DATETIME, None, [JUNE_3, JUNE_13, EAST, CLOUDY, JUNE_28],
                     id="interval"),
        pytest.param(WORLD, None, 20, [LAST_YEAR, JUNE_3, JUNE_13, EAST, JUNE_28], id="cloud"),
        pytest.param(WORLD, None, 4.2, [LAST_YEAR, JUNE_3, EAST], id="cloud-inclusive"),
        pytest.param(WORLD, "2024-06-20T00:00:00Z/..", None, [CLOUDY, JUNE_28], id="open-end"),
        pytest.param(WORLD, "../2024-06-05T00:00:00Z", None, [LAST_YEAR, JUNE_3], id="open-start"),
        pytest.param(WORLD, "2024-06-13T17:15:21Z", None, [JUNE_13], id="instant"),
    ],
)  # fmt: skip
def test_each_filter_alone(
    stac_api: StacServer,
    bbox: tuple[float, float, float, float],
    datetime: str | None,
    max_cloud_cover: float | None,
    expected: list[str],
) -> None:
    captures = discover(stac_api.url, bbox=bbox, datetime=datetime, max_cloud_cover=max_cloud_cover)

    assert [c["id"] for c in captures] == expected


def test_a_capture_lacking_a_requested_band_is_skipped_with_a_warning(
    stac_api: StacServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="examples.earthgazer.discover"):
        captures = discover(stac_api.url, datetime="2024-07-01T00:00:00Z/..")

    assert captures == []
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.capture_id == MISSING_B08_ID
    assert record.missing_bands == ["B08"]
    # Asking only for the bands it has finds it.
    [capture] = discover(stac_api.url, datetime="2024-07-01T00:00:00Z/..", bands=["B04", "B03"])
    assert capture["id"] == MISSING_B08_ID
    assert list(capture["bands"]) == ["B04", "B03"]


def test_checksums_are_parsed_to_hex_and_absent_ones_are_none(stac_api: StacServer) -> None:
    by_id = {c["id"]: c for c in discover(stac_api.url)}

    for capture_id in (JUNE_3, JUNE_28):
        for band, asset in by_id[capture_id]["bands"].items():
            path = stac_api.capture(capture_id).paths[band]
            assert asset["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert asset["size"] == path.stat().st_size
    for asset in by_id[JUNE_13]["bands"].values():
        assert asset["sha256"] is None
        assert asset["size"] is None


def test_a_checksum_of_another_hash_function_is_ignored(
    stac_api: StacServer, caplog: pytest.LogCaptureFixture
) -> None:
    document = stac_api.items[0]
    sha512 = "1340" + hashlib.sha512(b"x").hexdigest()
    document["assets"]["B04"]["file:checksum"] = sha512

    capture = capture_from_item(pystac.Item.from_dict(document), ["B04", "B08"])

    assert capture is not None
    assert capture["bands"]["B04"]["sha256"] is None
    assert capture["bands"]["B08"]["sha256"] == stac_api.capture(document["id"]).sha256("B08")
    assert any(getattr(r, "checksum", None) == sha512 for r in caplog.records)


def test_pages_of_one_item_are_followed(tmp_path: Path) -> None:
    root = tmp_path / "stac"
    with StacServer(root, default_captures(root), default_limit=1) as server:
        captures = discover(server.url)
        searches = server.requests_for("/search")

    assert [c["id"] for c in captures] == list(MATCHING_IDS)
    assert len(searches) == 4  # one page per match, MISSING_B08_ID included
    assert all(r.method == "POST" for r in searches)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_server_pages_with_limit_and_next_links(stac_api: StacServer, method: str) -> None:
    search = Client.open(stac_api.url).search(
        method=method,
        collections=[SENTINEL_COLLECTION],
        bbox=AOI_BBOX,
        datetime=SEARCH_DATETIME,
        query={"eo:cloud_cover": {"lt": MAX_CLOUD_COVER}},
        limit=1,
    )

    pages = list(search.pages_as_dicts())

    assert [[f["id"] for f in page["features"]] for page in pages] == [
        [JUNE_3],
        [JUNE_13],
        [JUNE_28],
        [MISSING_B08_ID],
    ]
    assert len(stac_api.requests_for("/search")) == 4


def test_the_server_filters_with_cql2_json_as_with_query(stac_api: StacServer) -> None:
    cql2 = {
        "op": "and",
        "args": [
            {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]},
            {"op": ">=", "args": [{"property": "eo:cloud_cover"}, 5]},
        ],
    }
    client = Client.open(stac_api.url)

    search = client.search(collections=[SENTINEL_COLLECTION], filter=cql2, filter_lang="cql2-json")

    assert sorted(item.id for item in search.items()) == [JUNE_13, JUNE_28]


def test_collection_items_are_served_and_an_unknown_collection_is_404(
    stac_api: StacServer,
) -> None:
    collection = Client.open(stac_api.url).get_collection(SENTINEL_COLLECTION)
    assert len(list(collection.get_items())) == 7
    response = httpx.get(f"{stac_api.url}/collections/nope/items")
    assert response.status_code == 404


def test_download_files_are_a_valid_job_whose_urls_serve_the_checksummed_bytes(
    stac_api: StacServer,
) -> None:
    captures = discover(stac_api.url)

    files = [file for capture in captures for file in download_files(capture)]

    request = msgspec.convert({"files": files, "priority": 8}, SubmitRequest)
    assert len({f.filename for f in request.files}) == len(files) == 12
    assert files[0] == {
        "url": f"{stac_api.url}/assets/{JUNE_3}/B02.tif",
        "filename": f"{JUNE_3}_B02.tif",
        "sha256": stac_api.capture(JUNE_3).sha256("B02"),
    }
    with httpx.Client() as client:
        for file in files:
            response = client.get(file["url"])
            assert response.status_code == 200
            capture_id, _, band = file["filename"].removesuffix(".tif").rpartition("_")
            expected = stac_api.capture(capture_id).sha256(band)
            assert hashlib.sha256(response.content).hexdigest() == expected
            assert file.get("sha256", expected) == expected
    assert not any("sha256" in f for f in download_files(captures[1]))  # JUNE_13 has none


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"bbox": (1.0, 2.0, 3.0)}, "bbox"),
        ({"bbox": (10.0, 0.0, 5.0, 1.0)}, "bbox"),
        ({"max_cloud_cover": 150}, "max_cloud_cover"),
        ({"bands": []}, "bands"),
        ({"bands": "B04"}, "bands"),
        ({"bands": ["B04", "B04"]}, "bands"),
        ({"collection": ""}, "collection"),
        ({"datetime": "last tuesday"}, "datetime"),
    ],
)
def test_bad_arguments_fail_for_good_naming_the_argument(
    stac_api: StacServer, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(Permanent, match=f"^{field}: "):
        discover(stac_api.url, **overrides)

    assert stac_api.requests_for("/search") == []


def test_a_search_the_api_refuses_fails_for_good(stac_api: StacServer) -> None:
    with pytest.raises(Permanent, match=r"refused the search \(400\).*at least one end"):
        discover(stac_api.url, datetime="../..")
