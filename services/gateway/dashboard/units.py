"""How the dashboard writes numbers for people: bytes, rates, moments."""

from __future__ import annotations

from datetime import UTC, datetime

_STEPS = ("B", "KB", "MB", "GB", "TB")
_STEP = 1000.0


def human_bytes(value: float | None) -> str:
    """1234567 -> '1.2 MB' (decimal units, as the rates are)."""
    if value is None:
        return "?"
    size = float(value)
    for unit in _STEPS:
        if abs(size) < _STEP or unit == _STEPS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= _STEP
    raise AssertionError("unreachable: the last unit always returns")


def human_rate(bps: float | None) -> str:
    return "" if not bps else f"{human_bytes(bps)}/s"


def moment(value: datetime | float | None) -> str:
    """A time in UTC to the second, from a datetime or Unix seconds."""
    if value is None:
        return ""
    when = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


FILTERS = {
    "bytes": human_bytes,
    "rate": human_rate,
    "moment": moment,
}
