"""The JSON the tasks bench prints: one object per workload and system, then a summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meter import BESIDE
from report import spread
from task_workloads import TaskWorkload

TARGETS = {  # the issue's, for Downlink
    "noop": ("tasks_per_s", 2_000.0),
    "slots256": ("slot_utilisation_pct", 90.0),
}
ENQUEUE_TARGET_PER_S = 5_000.0


@dataclass(frozen=True)
class Rep:
    """One timed rep.

    Attributes:
        seconds: from the first enqueue until the driver saw the last completion in PostgreSQL.
        enqueue_s: from the first enqueue until the last one was answered.
        busy_s: from the first task's start to the last completion, by PostgreSQL's timestamps.
        cpu_s: CPU seconds by process family over `seconds` (meter.py).
    """

    seconds: float
    enqueue_s: float
    busy_s: float
    cpu_s: dict[str, float]


def _per_1k(rep: Rep, count: int) -> dict[str, float]:
    per = {name: value / count * 1e3 for name, value in sorted(rep.cpu_s.items())}
    per["system"] = sum(v for name, v in per.items() if name not in BESIDE | {"driver"})
    per["total"] = per["system"] + per.get("driver", 0.0)
    return per


def task_result(
    system: str, workload: TaskWorkload, reps: list[Rep], details: dict[str, Any]
) -> dict[str, Any]:
    """One system on one workload: medians (min, max) over the reps."""
    count = workload.count
    cpu = [_per_1k(rep, count) for rep in reps]
    families = sorted({name for rep in cpu for name in rep})
    result: dict[str, Any] = {
        "workload": workload.name,
        "system": system,
        "tasks": count,
        "task": workload.task,
        "sleep_ms": workload.sleep_ms,
        "slots": workload.slots,
        "tasks_per_s": spread([count / r.seconds for r in reps]),
        "enqueue_per_s": spread([count / r.enqueue_s for r in reps]),
        "seconds": spread([r.seconds for r in reps], 3),
        "busy_s": spread([r.busy_s for r in reps], 3),
        "cpu_s_per_1k_tasks": {f: spread([rep.get(f, 0.0) for rep in cpu], 3) for f in families},
    }
    if workload.sleep_ms:
        result["slot_utilisation_pct"] = spread([workload.utilisation_pct(r.seconds) for r in reps])
        result["slot_utilisation_pct_busy"] = spread(
            [workload.utilisation_pct(r.busy_s) for r in reps]
        )
    return {**result, **details}


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    if "failed" in result:
        return {"failed": result["failed"]}
    line = {
        "tasks_per_s": result["tasks_per_s"]["median"],
        "enqueue_per_s": result["enqueue_per_s"]["median"],
        "cpu_s_per_1k_tasks": result["cpu_s_per_1k_tasks"]["system"]["median"],
    }
    if "slot_utilisation_pct" in result:
        line["slot_utilisation_pct"] = result["slot_utilisation_pct"]["median"]
    return line


def _ratios(ours: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    ratios = {
        "speed": round(ours["tasks_per_s"] / other["tasks_per_s"], 3),
        "enqueue": round(ours["enqueue_per_s"] / other["enqueue_per_s"], 3),
    }
    if other["cpu_s_per_1k_tasks"]:
        ratios["cpu"] = round(ours["cpu_s_per_1k_tasks"] / other["cpu_s_per_1k_tasks"], 3)
    return ratios


def _targets(workload: str, downlink: dict[str, Any]) -> dict[str, Any]:
    targets = {"enqueue_per_s": (ENQUEUE_TARGET_PER_S, downlink["enqueue_per_s"])}
    if workload in TARGETS:
        key, want = TARGETS[workload]
        targets[key] = (want, downlink[key])
    return {
        key: {"target": f">= {want:g}", "median": got, "met": got >= want}
        for key, (want, got) in targets.items()
    }


def _line(workload: str, entry: dict[str, Any]) -> str:
    """One line for people: each system's tasks/s, Downlink's ratios and targets."""
    parts = [
        f"{name} {s['tasks_per_s']:.0f}/s" if "failed" not in s else f"{name} FAILED"
        for name, s in entry["systems"].items()
    ]
    vs = [f"x{r['speed']:.2f} vs {name}" for name, r in entry["downlink_vs"].items()]
    met = [f"{k} {t['median']:g} {t['target']}: {'met' if t['met'] else 'MISSED'}"
           for k, t in entry.get("targets", {}).items()]  # fmt: skip
    return (
        f"{workload}: "
        + ", ".join(parts)
        + (f"; downlink {', '.join(vs)}" if vs else "")
        + (f"; {'; '.join(met)}" if met else "")
    )


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload: each system's medians, Downlink's ratios to the others, its targets."""
    by_workload: dict[str, dict[str, Any]] = {}
    for result in results:
        entry = by_workload.setdefault(result["workload"], {"systems": {}, "downlink_vs": {}})
        entry["systems"][result["system"]] = _headline(result)
    for name, entry in by_workload.items():
        downlink = entry["systems"].get("downlink")
        if downlink and "failed" not in downlink:
            for system, other in entry["systems"].items():
                if system != "downlink" and "failed" not in other:
                    entry["downlink_vs"][system] = _ratios(downlink, other)
            entry["targets"] = _targets(name, downlink)
        entry["line"] = _line(name, entry)
    return {
        "summary": by_workload,
        "ratios_meaning": "speed, enqueue = Downlink tasks/s ÷ the other's (above 1: Downlink "
        "faster); cpu = Downlink's CPU s per 1,000 tasks (its processes, not the driver) ÷ the "
        "other's (above 1: Downlink costlier)",
    }
