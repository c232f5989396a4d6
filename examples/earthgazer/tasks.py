"""EarthGazer's steps as Downlink tasks: discover, back up, stack and crop, NDVI, RGB, temporal.

I/O steps run on the `earthgazer.io` queue, raster steps on `earthgazer.cpu` (Celery's io_queue
and cpu_queue): `downlink worker --tasks examples.earthgazer.workflows --queue earthgazer.io`,
and one with `--queue earthgazer.cpu`. The raster work runs in a thread (GDAL and numpy let go
of the GIL); every file a step makes is saved to storage under its workflow and listed in the
step's `artifacts`, so the workflow lists, serves and exports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from downlink import Context, Permanent, task
from examples.earthgazer.backup import backup_capture
from examples.earthgazer.discover import band_filename, discover_captures
from services.processor.rasters import ProcessingError
from services.processor.stacks import ndvi_from_stack, rgb_from_stack, stack_and_crop
from services.processor.temporal import temporal_analysis
from services.tasks.artifacts import Artifacts

IO_QUEUE = "earthgazer.io"
CPU_QUEUE = "earthgazer.cpu"
BANDS = ("B02", "B03", "B04", "B08")
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


@functools.cache
def artifacts() -> Artifacts:
    """The worker's storage (DOWNLINK_STORAGE_URL), opened on first use."""
    return Artifacts.from_env()


@task(name="earthgazer.discover", queue=IO_QUEUE, max_tries=5, retry_backoff_s=2)
async def discover(
    *,
    stac_url: str,
    collection: str,
    bbox: list[float],
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    bands: tuple[str, ...] = BANDS,
    mission_filter: str | None = None,
) -> list[dict[str, Any]]:
    """The captures of `collection` over `bbox`; `mission_filter` keeps ids starting with it
    (e.g. "S2A")."""
    found = await asyncio.to_thread(
        discover_captures,
        stac_url,
        collection=collection,
        bbox=bbox,
        datetime=datetime,
        max_cloud_cover=max_cloud_cover,
        bands=bands,
    )
    return [c for c in found if mission_filter is None or c["id"].startswith(mission_filter)]


@task(name="earthgazer.backup", queue=IO_QUEUE)
async def backup(download: dict[str, Any], capture_id: str, target_dir: str) -> dict[str, Any]:
    """Copy the capture's original bands to a second storage target, skipping what is there."""
    async with contextlib.AsyncExitStack() as stack:
        files = [
            (file["filename"], str(await stack.enter_async_context(artifacts().local(file["key"]))))
            for file in download["files"]
        ]
        return await asyncio.to_thread(backup_capture, files, target_dir, capture_id)


@task(name="earthgazer.stack_and_crop", queue=CPU_QUEUE, timeout_s=900)
async def stack(
    ctx: Context,
    *,
    capture_id: str,
    captured_at: str,
    bounds: list[float],
    download: dict[str, Any] | None = None,
    folder: str | None = None,
    bands: tuple[str, ...] = BANDS,
) -> dict[str, Any]:
    """The capture's bands (from its download step, or a folder of earlier ones) stacked into
    one COG cropped to `bounds` (WGS84)."""
    async with contextlib.AsyncExitStack() as exits:
        paths = await _band_paths(exits, capture_id, bands, download, folder)
        with artifacts().scratch() as scratch:
            out = scratch / "stack.tif"
            summary = await _raster(stack_and_crop, list(paths.items()), tuple(bounds), str(out))
            saved = await artifacts().save(out, ctx, f"{capture_id}/stack.tif", COG)
    return _made(capture_id, captured_at, saved, stack=saved["key"], summary=summary)


@task(name="earthgazer.ndvi", queue=CPU_QUEUE, timeout_s=900)
async def ndvi(stacked: dict[str, Any], ctx: Context) -> dict[str, Any]:
    capture_id = stacked["capture_id"]
    async with artifacts().local(stacked["stack"]) as source:
        with artifacts().scratch() as scratch:
            out = scratch / "ndvi.tif"
            stats = await _raster(ndvi_from_stack, str(source), str(out))
            saved = await artifacts().save(out, ctx, f"{capture_id}/ndvi.tif", COG)
    return _made(capture_id, stacked["captured_at"], saved, ndvi=saved["key"], stats=stats)


@task(name="earthgazer.rgb", queue=CPU_QUEUE, timeout_s=900)
async def rgb(stacked: dict[str, Any], ctx: Context) -> dict[str, Any]:
    capture_id = stacked["capture_id"]
    async with artifacts().local(stacked["stack"]) as source:
        with artifacts().scratch() as scratch:
            out, preview = scratch / "rgb.tif", scratch / "rgb.png"
            await _raster(rgb_from_stack, str(source), str(out), preview=str(preview))
            cog = await artifacts().save(out, ctx, f"{capture_id}/rgb.tif", COG)
            png = await artifacts().save(preview, ctx, f"{capture_id}/rgb.png", "image/png")
    result = _made(capture_id, stacked["captured_at"], cog, rgb=cog["key"])
    result["artifacts"].append(png)
    return result


@task(name="earthgazer.temporal_analysis", queue=CPU_QUEUE, timeout_s=900)
async def temporal(
    ndvis: list[dict[str, Any]], ctx: Context, bounds: list[float] | None = None
) -> dict[str, Any]:
    """NDVI mean, min, max, std and valid share per capture date: JSON, CSV and a chart."""
    if not ndvis:
        raise Permanent("ndvis: no capture reached NDVI; nothing to analyse")
    async with contextlib.AsyncExitStack() as exits:
        captures = [
            (n["captured_at"], str(await exits.enter_async_context(artifacts().local(n["ndvi"]))))
            for n in ndvis
        ]
        with artifacts().scratch() as scratch:
            report = await _raster(
                temporal_analysis, captures, str(scratch), bounds=tuple(bounds) if bounds else None
            )
            saved = [
                await artifacts().save(Path(report[kind]), ctx, f"temporal/{name}", media)
                for kind, name, media in (
                    ("json", "ndvi_timeseries.json", "application/json"),
                    ("csv", "ndvi_timeseries.csv", "text/csv"),
                    ("png", "ndvi_timeseries.png", "image/png"),
                )
            ]
    return {"rows": report["rows"], "artifacts": saved}


async def _band_paths(
    exits: contextlib.AsyncExitStack,
    capture_id: str,
    bands: Sequence[str],
    download: dict[str, Any] | None,
    folder: str | None,
) -> dict[str, Path]:
    """Each band's local file: a download step's stored file, or `folder/<band file>`."""
    if (download is None) == (folder is None):
        raise Permanent("download, folder: give the bands' download step or a folder")
    if folder is not None:
        return {band: Path(folder) / band_filename(capture_id, band) for band in bands}
    assert download is not None
    by_name = {file["filename"]: file["key"] for file in download["files"]}
    paths = {}
    for band in bands:
        key = by_name.get(band_filename(capture_id, band))
        if key is None:
            raise Permanent(f"bands: {band} of {capture_id} was not downloaded")
        paths[band] = await exits.enter_async_context(artifacts().local(key))
    return paths


async def _raster(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a raster function in a thread; its refusal (bounds off the capture) is permanent."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except ProcessingError as exc:
        raise Permanent(str(exc)) from None


def _made(
    capture_id: str, captured_at: str, saved: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    return {"capture_id": capture_id, "captured_at": captured_at, **fields, "artifacts": [saved]}
