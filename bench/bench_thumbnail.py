"""Benchmark: the quicklook of a 1 GiB raster, time and peak memory, against two references.

Each method runs in a fresh child process; its peak RSS is the kernel's high-water mark of that
process (VmHWM), read as it ends (wait4's ru_maxrss would carry the parent's, inherited at fork).
Methods:
- downlink: services.processor.tasks.make_thumbnail, as the processor's pool runs it.
- gdal_outsize_nearest: what `gdal_translate -outsize 256 256` does, through rasterio's bundled
  GDAL: one decimated RasterIO (nearest) into a small buffer, written as PNG.
- naive_full_read: the whole raster read into numpy, stretched, resized with Pillow.
- baseline: the imports alone (python, numpy, rasterio, Pillow), for scale.

Usage: python bench/bench_thumbnail.py [--size-gib 1.0] [--keep PATH]
Prints one JSON object; exits 1 when downlink's peak RSS is over --limit-mib (300).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("baseline", "downlink", "gdal_outsize_nearest", "naive_full_read")
BANDS = 3
MAX_PX = 256


def make_raster(path: Path, size_gib: float) -> dict[str, Any]:
    """A 3-band uint16 GeoTIFF of `size_gib` GiB of pixels: tiled, uncompressed, no overviews."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    side = math.ceil(math.sqrt(size_gib * 1024**3 / (BANDS * 2)))
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": BANDS,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(600_000.0, 5_000_000.0, 10.0, 10.0),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "BIGTIFF": "YES",
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        for row in range(0, side, 512):
            height = min(512, side - row)
            rows, cols = np.indices((height, side), dtype=np.uint32)
            rows += row
            for band in range(1, BANDS + 1):
                # A gradient per band plus a pattern, like reflectance: stretchable, not flat.
                data = (500 * band + (rows * 3 + cols * 5 * band) % 3000).astype(np.uint16)
                dataset.write(data, band, window=Window(0, row, side, height))
    return {
        "path": str(path),
        "width": side,
        "height": side,
        "bands": BANDS,
        "dtype": "uint16",
        "bytes": path.stat().st_size,
        "pixel_bytes": side * side * BANDS * 2,
        "layout": "tiled 512, uncompressed, no overviews",
    }


def _warm(path: Path) -> None:
    # Every method then reads from the page cache: the comparison is CPU and memory, not disk.
    with path.open("rb") as source:
        while source.read(16 << 20):
            pass


def run_method(method: str, source: str, out: str) -> dict[str, Any]:
    """The child side: run one method and describe its output."""
    os.environ.setdefault("GDAL_CACHEMAX", "64")  # what the processor's workers use
    import numpy as np
    import rasterio
    from PIL import Image
    from rasterio.enums import Resampling

    started = time.perf_counter()
    if method == "baseline":
        return {"seconds": time.perf_counter() - started}
    if method == "downlink":
        from services.processor import tasks

        facts = tasks.make_thumbnail(source, out, MAX_PX)
        return {"seconds": time.perf_counter() - started, "output": facts}
    with rasterio.open(source) as dataset:
        scale = MAX_PX / max(dataset.width, dataset.height)
        shape = (BANDS, round(dataset.height * scale), round(dataset.width * scale))
        if method == "gdal_outsize_nearest":
            data = dataset.read(out_shape=shape, resampling=Resampling.nearest)
        else:
            data = dataset.read()  # naive_full_read: every pixel in memory
    low, high = np.percentile(data, (2, 98))
    stretched = np.clip((data.astype(np.float32) - low) / (high - low) * 255, 0, 255)
    image = Image.fromarray(np.moveaxis(stretched.astype(np.uint8), 0, -1))
    if method == "naive_full_read":
        image.thumbnail((MAX_PX, MAX_PX))
    image.save(out, format="PNG")
    return {
        "seconds": time.perf_counter() - started,
        "output": {"width": image.width, "height": image.height, "mode": image.mode},
    }


def _peak_rss_kib() -> int:
    """This process's peak resident set size (Linux /proc), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(method: str, source: Path, workdir: Path) -> dict[str, Any]:
    """Run `method` in a fresh interpreter; its time, peak RSS and output facts."""
    out = workdir / f"{method}.png"
    report = workdir / f"{method}.json"
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", method, str(source), str(out), str(report)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    child.wait()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        return {"method": method, "error": f"exit status {child.returncode}"}
    facts = json.loads(report.read_text())
    return {
        "method": method,
        "seconds": round(facts["seconds"], 3),
        "wall_seconds_with_startup": round(wall, 3),
        "peak_rss_mib": round(facts["peak_rss_kib"] / 1024, 1),
        "output": facts.get("output"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--limit-mib", type=float, default=300.0)
    parser.add_argument("--keep", type=Path, help="keep (or reuse) the raster at this path")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "SRC", "OUT", "REPORT"))
    args = parser.parse_args()
    if args.child:
        method, source, out, report = args.child
        facts = run_method(method, source, out)
        facts["peak_rss_kib"] = _peak_rss_kib()
        Path(report).write_text(json.dumps(facts))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="downlink-bench-"))
    try:
        source = args.keep or workdir / "big.tif"
        started = time.perf_counter()
        if source.exists():
            import rasterio

            with rasterio.open(source) as dataset:
                raster = {
                    "path": str(source),
                    "width": dataset.width,
                    "height": dataset.height,
                    "bands": dataset.count,
                    "dtype": dataset.dtypes[0],
                    "bytes": source.stat().st_size,
                }
        else:
            raster = make_raster(source, args.size_gib)
        raster["generate_seconds"] = round(time.perf_counter() - started, 1)
        _warm(source)
        results = [measure(method, source, workdir) for method in METHODS]
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for leftover in workdir.iterdir():
                leftover.unlink()
            workdir.rmdir()
    ours = next(r for r in results if r["method"] == "downlink")
    under = "peak_rss_mib" in ours and ours["peak_rss_mib"] < args.limit_mib
    print(
        json.dumps(
            {
                "benchmark": "thumbnail",
                "raster": raster,
                "max_px": MAX_PX,
                "cpu_count": os.cpu_count(),
                "results": results,
                "limit_mib": args.limit_mib,
                "downlink_under_limit": under,
            },
            indent=2,
        )
    )
    return 0 if under else 1


if __name__ == "__main__":
    sys.exit(main())
