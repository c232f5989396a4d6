"""The JSON the bench prints: one object per workload and system, then a summary with ratios."""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any, TextIO


def spread(values: list[float], digits: int = 1) -> dict[str, float]:
    """Median, min and max over the reps (one sitting)."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def emit(result: dict[str, Any], output: TextIO | None, indent: int | None = None) -> None:
    """One JSON result on stdout, and in `output` too when given."""
    for stream in filter(None, (sys.stdout, output)):
        print(json.dumps(result, indent=indent), file=stream, flush=True)


def run_result(
    system: str,
    workload: dict[str, Any],
    seconds: list[float],
    cpu_us: list[dict[str, float]],
    details: dict[str, Any],
) -> dict[str, Any]:
    """One system on one workload: rates over the reps and CPU µs per file for each family."""
    count, size = workload["count"], workload["size_bytes"]
    families = sorted({name for rep in cpu_us for name in rep})
    return {
        "workload": workload["name"],
        "system": system,
        "files": count,
        "file_bytes": size,
        "files_per_s": spread([count / s for s in seconds]),
        "mib_per_s": spread([count * size / 2**20 / s for s in seconds]),
        "cpu_us_per_file": {f: spread([rep.get(f, 0.0) for rep in cpu_us], 0) for f in families},
        **details,
    }


def _cpu_total(result: dict[str, Any]) -> float | None:
    cpu = result.get("cpu_us_per_file", {})
    # Downlink's status polls go through its gateway; the peers' poll backend is outside total.
    chosen = cpu.get("total_excl_polls") or cpu.get("total")
    return chosen["median"] if chosen else None


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload: each system's median files/s, MiB/s and CPU total, and Downlink's ratios."""
    by_workload: dict[str, dict[str, Any]] = {}
    for result in results:
        entry = by_workload.setdefault(result["workload"], {"systems": {}, "downlink_vs": {}})
        if "failed" in result:
            entry["systems"][result["system"]] = {"failed": result["failed"]}
            continue
        entry["systems"][result["system"]] = {
            "files_per_s": result["files_per_s"]["median"],
            "mib_per_s": result["mib_per_s"]["median"],
            "cpu_us_per_file_total": _cpu_total(result),
        }
    for entry in by_workload.values():
        downlink = entry["systems"].get("downlink")
        if not downlink or "failed" in downlink:
            continue
        for name, other in entry["systems"].items():
            if name == "downlink" or "failed" in other:
                continue
            ratios = {"speed": round(downlink["files_per_s"] / other["files_per_s"], 3)}
            if downlink["cpu_us_per_file_total"] and other["cpu_us_per_file_total"]:
                cpu = downlink["cpu_us_per_file_total"] / other["cpu_us_per_file_total"]
                ratios["cpu_per_file"] = round(cpu, 3)
            entry["downlink_vs"][name] = ratios
    return {
        "summary": by_workload,
        "ratios_meaning": "speed = Downlink files/s ÷ the other's (above 1: Downlink faster); "
        "cpu_per_file = Downlink CPU µs per file ÷ the other's (above 1: Downlink costlier)",
    }


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    if "failed" in result:
        return {"failed": result["failed"]}
    if result["scenario"] == "pollers":
        return {
            key: {
                "median": result[key]["median"],
                "target": f"< {target}",
                "met": result[key]["median"] < target,
            }
            for key, target in result["targets"].items()
        } | {"gets_per_s": result["gets_per_s"]["median"]}
    sides = [key for key, value in result.items() if isinstance(value, dict) and "files" in value]
    ratio = result["ratio"]["median"]
    return {
        **{f"{side}_files_per_s": result[side]["files_per_s"]["median"] for side in sides},
        "ratio": ratio,
        "ratio_meaning": result["ratio_meaning"],
        "target": f">= {result['target']}",
        "met": ratio >= result["target"],
    }


def scenario_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per Downlink-only scenario: its medians against the issue's targets."""
    return {result["scenario"]: _headline(result) for result in results}
