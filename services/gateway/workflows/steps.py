"""Writing a workflow's steps: those submitted, or those a step's result expanded into."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

    from shared.workflows import ResolvedStep


async def insert_steps(
    connection: asyncpg.Connection,
    workflow_id: str,
    steps: Sequence[ResolvedStep],
    *,
    owner: str | None,
) -> list[str]:
    """Write `steps` (an expansion's under `owner`, their keys prefixed with its key) in one
    statement; the keys of those that wait on nothing, ready to launch, in order."""

    def full(key: str) -> str:
        return key if owner is None else f"{owner}/{key}"

    children: dict[str, list[str]] = {step.key: [] for step in steps}
    for step in steps:
        for parent in step.after:
            children[parent].append(step.key)
    first = await connection.fetchval(
        "SELECT coalesce(max(position), -1) + 1 FROM workflow_steps WHERE workflow_id = $1",
        workflow_id,
    )
    await connection.execute(
        "INSERT INTO workflow_steps (workflow_id, key, position, kind, task, queue, priority,"
        " args, input, after, gather, children, owner, waiting_on)"
        " SELECT $1, s.key, $2 + s.n - 1, s.kind, s.task, s.queue, s.priority, s.args::jsonb,"
        " s.input, s.after::text[], s.gather, s.children::text[], $3, s.waiting_on"
        " FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::smallint[],"
        "   $9::text[], $10::text[], $11::text[], $12::bool[], $13::text[], $14::int[])"
        "   WITH ORDINALITY AS s(key, kind, task, queue, priority, args, input, after, gather,"
        "   children, waiting_on, n)",
        workflow_id,
        first,
        owner,
        [full(s.key) for s in steps],
        [s.kind for s in steps],
        [s.task for s in steps],
        [s.queue for s in steps],
        [s.priority for s in steps],
        [msgspec.json.encode(s.args).decode() for s in steps],
        [s.input for s in steps],
        [_array([full(k) for k in s.after]) for s in steps],
        [s.gather for s in steps],
        [_array([full(k) for k in children[s.key]]) for s in steps],
        [len(s.after) for s in steps],
    )
    return [full(s.key) for s in steps if not s.after]


def _array(items: Sequence[str]) -> str:
    # A text[] literal per row: unnest of a two-dimensional array would flatten it.
    quoted = ('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "{" + ",".join(quoted) + "}"
