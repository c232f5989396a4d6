"""Small line charts drawn on the server: the points of an inline SVG polyline, no script."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

WIDTH = 300
HEIGHT = 60


class Sparkline(msgspec.Struct, frozen=True, kw_only=True):
    """An SVG polyline's `points`, the peak it is scaled to and the latest value."""

    points: str
    peak: float
    latest: float
    width: int = WIDTH
    height: int = HEIGHT


def sparkline(values: Sequence[float]) -> Sparkline:
    """`values` evenly across the width, 0 at the bottom and the peak at the top."""
    peak = max(values, default=0.0)
    # A flat zero line still draws, at the bottom, rather than dividing by zero.
    scale = (HEIGHT - 2) / peak if peak > 0 else 0.0
    step = WIDTH / max(len(values) - 1, 1)
    points = " ".join(
        f"{index * step:.1f},{HEIGHT - 1 - value * scale:.1f}" for index, value in enumerate(values)
    )
    return Sparkline(points=points, peak=peak, latest=values[-1] if values else 0.0)
