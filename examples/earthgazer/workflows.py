"""EarthGazer's pipeline as Downlink workflows, with the names and arguments of its Celery canvas.

Per capture: download its bands (a download job in the priority lane, checked against the
STAC item's `file:checksum`) -> back up the originals ‖ stack and crop to the bounds -> NDVI ‖
RGB; over all captures of the run: the temporal analysis of their NDVI. Run a worker of each
queue with `--tasks examples.earthgazer.workflows`, then POST /api/v1/workflows
`{"workflow": "process_multiple_captures_workflow", "args": {...}}` (docs/workflows.md).

Locations (`full_pipeline_workflow`) are named areas: EARTHGAZER_LOCATIONS is a JSON file of
{"location id": [west, south, east, north]}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from downlink import Canvas, Permanent, Step, chain, download, export, group, task, workflow
from examples.earthgazer.discover import discover_captures, download_files
from examples.earthgazer.tasks import BANDS, IO_QUEUE, backup, discover, ndvi, rgb, stack, temporal

__all__ = ["backup", "discover", "ndvi", "rgb", "stack", "temporal"]  # the worker's tasks too

DOWNLOAD_PRIORITY = 8


def capture_pipeline(
    capture: dict[str, Any], bounds: list[float], backup_dir: str
) -> tuple[Canvas, Step]:
    """One capture's steps, and its NDVI step (what the temporal analysis waits on)."""
    cid = capture["id"]
    fetched = download(
        files=download_files(capture), key=f"download-{cid}", priority=DOWNLOAD_PRIORITY
    )
    backed_up = Step(backup, {"capture_id": cid, "target_dir": backup_dir}, key=f"backup-{cid}")
    stacked = Step(
        stack,
        {"capture_id": cid, "captured_at": capture["datetime"], "bounds": bounds},
        key=f"stack-{cid}",
    )
    index = Step(ndvi, key=f"ndvi-{cid}")
    composite = Step(rgb, key=f"rgb-{cid}")
    return chain(fetched, group(backed_up, chain(stacked, group(index, composite)))), index


def captures_pipeline(
    captures: list[dict[str, Any]],
    bounds: list[float],
    backup_dir: str,
    *,
    run_temporal_analysis: bool,
    export_format: str | None = None,
) -> Canvas:
    """Every capture's steps side by side, the temporal analysis over their NDVI, then (with
    `export_format`) one archive of everything the run made and downloaded."""
    if not captures:
        raise Permanent("captures: none found to process")
    parts = [capture_pipeline(capture, bounds, backup_dir) for capture in captures]
    blocks: list[Canvas] = [block for block, _ in parts]
    if run_temporal_analysis:
        after = [index for _, index in parts]
        blocks.append(Step(temporal, {"bounds": bounds}, key="temporal", after=after))
    if export_format is None:
        return group(*blocks)
    return chain(group(*blocks), export(export_format, key="export"))


@task(name="earthgazer.process_captures", queue=IO_QUEUE)
async def process_captures(
    captures: list[dict[str, Any]],
    bounds: list[float],
    backup_dir: str,
    run_temporal_analysis: bool = True,
) -> Canvas:
    """The steps for captures a discover step found: this step expands into them."""
    return captures_pipeline(
        captures, bounds, backup_dir, run_temporal_analysis=run_temporal_analysis
    )


@workflow(name="process_single_capture_workflow", queue=IO_QUEUE)
def process_single_capture_workflow(
    *,
    capture_id: str,
    bands: list[str],
    bounds: list[float],
    stac_url: str,
    collection: str,
    backup_dir: str,
) -> Canvas:
    return process_multiple_captures_workflow.function(
        capture_ids=[capture_id],
        bands=bands,
        bounds=bounds,
        stac_url=stac_url,
        collection=collection,
        backup_dir=backup_dir,
        run_temporal_analysis=False,
    )


@workflow(name="process_multiple_captures_workflow", queue=IO_QUEUE)
def process_multiple_captures_workflow(
    *,
    capture_ids: list[str],
    bands: list[str],
    bounds: list[float],
    stac_url: str,
    collection: str,
    backup_dir: str,
    run_temporal_analysis: bool = True,
    export_format: str | None = None,
) -> Canvas:
    """The named captures (looked up in the STAC API by id) processed over `bounds`; with
    `export_format` ("zip" or "tar.gz"), packed into one archive at the end."""
    found = discover_captures(
        stac_url,
        collection=collection,
        bbox=bounds,
        datetime=None,
        max_cloud_cover=None,
        bands=bands,
    )
    by_id = {capture["id"]: capture for capture in found}
    missing = [cid for cid in capture_ids if cid not in by_id]
    if missing:
        raise Permanent(f"capture_ids: not found over the bounds in {collection}: {missing}")
    captures = [by_id[cid] for cid in capture_ids]
    return captures_pipeline(
        captures,
        bounds,
        backup_dir,
        run_temporal_analysis=run_temporal_analysis,
        export_format=export_format,
    )


@workflow(name="full_pipeline_workflow", queue=IO_QUEUE)
def full_pipeline_workflow(
    *,
    location_ids: list[str],
    stac_url: str,
    collection: str,
    backup_dir: str,
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    bands: tuple[str, ...] = BANDS,
    mission_filter: str | None = None,
) -> Canvas:
    """Discover new captures over each location, then process them (each location its own
    temporal analysis)."""
    locations = _locations()
    unknown = [lid for lid in location_ids if lid not in locations]
    if unknown:
        raise Permanent(f"location_ids: unknown locations {unknown}")
    per_location = []
    for lid in location_ids:
        bbox = locations[lid]
        search = {
            "stac_url": stac_url,
            "collection": collection,
            "bbox": bbox,
            "datetime": datetime,
            "max_cloud_cover": max_cloud_cover,
            "bands": bands,
            "mission_filter": mission_filter,
        }
        found = Step(discover, search, key=f"discover-{lid}")
        process = Step(
            process_captures, {"bounds": bbox, "backup_dir": backup_dir}, key=f"process-{lid}"
        )
        per_location.append(chain(found, process))
    return group(*per_location)


@workflow(name="reprocess_existing_captures_workflow", queue=IO_QUEUE)
def reprocess_existing_captures_workflow(
    captures: list[dict[str, str]], bounds: list[float], backup_dir: str
) -> Canvas:
    """Stack, crop, NDVI, RGB and temporal analysis again from the backed-up originals (each
    capture as {id, datetime}), over new bounds: nothing is downloaded."""
    indexes, blocks = [], []
    for capture in captures:
        cid = capture["id"]
        stacked = Step(
            stack,
            {
                "capture_id": cid,
                "captured_at": capture["datetime"],
                "bounds": bounds,
                "folder": str(Path(backup_dir) / cid),
            },
            key=f"stack-{cid}",
        )
        index = Step(ndvi, key=f"ndvi-{cid}")
        blocks.append(chain(stacked, group(index, Step(rgb, key=f"rgb-{cid}"))))
        indexes.append(index)
    blocks.append(Step(temporal, {"bounds": bounds}, key="temporal", after=indexes))
    return group(*blocks)


def _locations() -> dict[str, list[float]]:
    path = os.environ.get("EARTHGAZER_LOCATIONS")
    if not path:
        raise Permanent("EARTHGAZER_LOCATIONS is not set: no locations to look up")
    found: dict[str, list[float]] = json.loads(Path(path).read_text())
    return found
