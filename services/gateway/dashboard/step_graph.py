"""A workflow's steps laid out as a small graph for inline SVG: a column per depth (how many
steps stand before it on its longest path), an edge from each step it runs `after`."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from services.gateway.workflows.records import StepRecord

NODE_WIDTH = 160
NODE_HEIGHT = 34
COLUMN_GAP = 56
ROW_GAP = 14
MARGIN = 8
LABEL_CHARS = 20
# Past this many steps the picture stops helping (and weighs on the page); the table remains.
MAX_DRAWN_STEPS = 300


class Node(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    label: str
    status: str
    x: int
    y: int
    href: str | None


class Edge(msgspec.Struct, frozen=True, kw_only=True):
    """A cubic curve from the parent's right side to the child's left side."""

    path: str
    status: str  # the parent's: an edge out of a completed step is drawn as travelled


class Graph(msgspec.Struct, frozen=True, kw_only=True):
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int
    node_width: int = NODE_WIDTH
    node_height: int = NODE_HEIGHT


def depths(steps: Sequence[StepRecord]) -> dict[str, int]:
    """Each step's column: 0 without parents, else one more than its deepest parent.

    Kahn's order, not recursion: a chain of a thousand steps must not exhaust the stack. A
    dependency on no listed step is ignored; a step left on a cycle (which submission refuses)
    stays in column 0.
    """
    known = {step.key for step in steps}
    parents = {step.key: [p for p in step.after if p in known] for step in steps}
    children: dict[str, list[str]] = {key: [] for key in known}
    waiting = {key: len(found) for key, found in parents.items()}
    for key, found in parents.items():
        for parent in found:
            children[parent].append(key)
    depth = dict.fromkeys(known, 0)
    ready = deque(key for key in (step.key for step in steps) if waiting[key] == 0)
    while ready:
        key = ready.popleft()
        for child in children[key]:
            depth[child] = max(depth[child], depth[key] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    return depth


def layout(steps: Sequence[StepRecord], *, link: dict[str, str]) -> Graph | None:
    """The graph of `steps` in their order within each column; None when there are too many
    to draw. `link` maps a step's key to the page of its task or job."""
    if not steps or len(steps) > MAX_DRAWN_STEPS:
        return None
    depth = depths(steps)
    rows: dict[int, int] = {}
    places: dict[str, tuple[int, int]] = {}
    nodes: list[Node] = []
    for step in steps:
        column = depth[step.key]
        row = rows.get(column, 0)
        rows[column] = row + 1
        x = MARGIN + column * (NODE_WIDTH + COLUMN_GAP)
        y = MARGIN + row * (NODE_HEIGHT + ROW_GAP)
        places[step.key] = (x, y)
        label = step.key if len(step.key) <= LABEL_CHARS else f"{step.key[: LABEL_CHARS - 1]}…"
        nodes.append(
            Node(key=step.key, label=label, status=step.status, x=x, y=y, href=link.get(step.key))
        )
    status = {step.key: step.status for step in steps}
    edges = [
        _edge(places[parent], places[step.key], status[parent])
        for step in steps
        for parent in step.after
        if parent in places
    ]
    width = MARGIN * 2 + (max(depth.values()) + 1) * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP
    height = MARGIN * 2 + max(rows.values()) * (NODE_HEIGHT + ROW_GAP) - ROW_GAP
    return Graph(nodes=nodes, edges=edges, width=width, height=height)


def _edge(start: tuple[int, int], end: tuple[int, int], status: str) -> Edge:
    x1, y1 = start[0] + NODE_WIDTH, start[1] + NODE_HEIGHT // 2
    x2, y2 = end[0], end[1] + NODE_HEIGHT // 2
    bend = (x2 - x1) // 2
    return Edge(path=f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}", status=status)
