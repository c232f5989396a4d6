"""NDVI over time: per-capture statistics of NDVI COGs as a JSON file, a CSV and a PNG chart.

Sync and CPU-bound like tasks.py; each NDVI raster streams through in strips.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from services.processor.rasters import AlignedBand, ProcessingError, open_raster, reference_grid
from services.processor.tasks import _input_errors, _NdviStats

if TYPE_CHECKING:
    from numpy.typing import NDArray

OUTPUT_STEM = "ndvi_timeseries"
CSV_COLUMNS = ("date", "mean", "min", "max", "std", "valid_share")
ROW_STATS = ("mean", "min", "max", "std", "valid_share", "valid_pixels", "total_pixels")
CHART_SIZE_IN = (9.0, 4.5)
CHART_DPI = 100


@_input_errors
def temporal_analysis(
    captures: Sequence[tuple[str, str]],
    out_dir: str,
    *,
    bounds: tuple[float, float, float, float] | None = None,
) -> dict[str, Any]:
    """Per-date NDVI statistics of `captures` ((ISO datetime, NDVI COG path) pairs), by date.

    Statistics cover the valid pixels inside the WGS84 `bounds` (the whole raster without);
    the std is the population one. Writes ndvi_timeseries.{json,csv,png} into `out_dir`.
    """
    if not captures:
        raise ProcessingError("a temporal analysis needs at least one capture; got none")
    dated = sorted(((_capture_time(when), path) for when, path in captures), key=lambda c: c[0])
    rows = [_capture_row(when, path, bounds) for when, path in dated]
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {kind: folder / f"{OUTPUT_STEM}.{kind}" for kind in ("json", "csv", "png")}
    document = {"bounds_wgs84": list(bounds) if bounds else None, "rows": rows}
    outputs["json"].write_text(json.dumps(document, indent=2) + "\n")
    _write_csv(rows, outputs["csv"])
    _write_chart(dated, rows, outputs["png"])
    return {
        "kind": "ndvi_timeseries",
        "captures": len(rows),
        "rows": rows,
        "bounds_wgs84": document["bounds_wgs84"],
        **{kind: str(path) for kind, path in outputs.items()},
    }


def _capture_time(value: str) -> datetime:
    """`value` as an aware UTC datetime; a time without a zone is taken as UTC (as STAC's are)."""
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise ProcessingError(f"capture date {value!r} is not an ISO 8601 datetime") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _capture_row(
    when: datetime, path: str, bounds: tuple[float, float, float, float] | None
) -> dict[str, Any]:
    """The NDVI statistics of one capture's raster, within `bounds` if given."""
    date = when.isoformat().replace("+00:00", "Z")
    stats = _NdviStats()
    with open_raster(path) as dataset:
        if not np.issubdtype(np.dtype(dataset.dtypes[0]), np.floating):
            raise ProcessingError(
                f"capture {date}: {Path(path).name} is {dataset.dtypes[0]}, not an NDVI raster"
            )
        try:
            grid = reference_grid(dataset, bounds)
        except ProcessingError as exc:
            raise ProcessingError(f"capture {date}: {exc}") from None
        band = AlignedBand(dataset, grid)
        for window in grid.strips():
            data = band.read(window)
            values = np.ma.getdata(data).astype(np.float32)
            stats.add(values, ~np.ma.getmaskarray(data) & np.isfinite(values))
    facts = stats.facts()
    return {"date": date, **{name: facts[name] for name in ROW_STATS}, "source": Path(path).name}


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            # A date without valid pixels has empty cells, not zeros that would read as NDVI 0.
            writer.writerow(["" if row[name] is None else row[name] for name in CSV_COLUMNS])


def _write_chart(dated: list[tuple[datetime, str]], rows: list[dict[str, Any]], path: Path) -> None:
    """Mean NDVI per date as a line, the min-max range as a band around it (Agg, no pyplot:
    no global figure state in a pool worker)."""
    # Naive UTC as datetime64: matplotlib's own date type, with no time-zone conversion.
    dates = np.array([when.replace(tzinfo=None) for when, _path in dated], dtype="datetime64[s]")

    def series(name: str) -> NDArray[np.float64]:
        return np.array([np.nan if row[name] is None else row[name] for row in rows])

    with rc_context({"date.converter": "concise"}):
        figure = Figure(figsize=CHART_SIZE_IN, dpi=CHART_DPI, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.fill_between(dates, series("min"), series("max"), alpha=0.25, label="min to max")
        axes.plot(dates, series("mean"), marker="o", label="mean")
        axes.set_xlabel("Capture date (UTC)")
        axes.set_ylabel("NDVI")
        axes.set_title("NDVI over time")
        axes.grid(alpha=0.3)
        axes.legend(loc="best")
        figure.savefig(path, format="png")
