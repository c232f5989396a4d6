"""A workflow's files: what its steps listed in their results' `artifacts`, served one by one,
and all of them (with its download steps' files) packed by the exporter into one archive with
a manifest and a STAC ItemCollection, as a job's export is."""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from services.gateway.errors import NotFound
from services.gateway.exports.insertion import insert_export
from services.gateway.exports.records import Selection
from services.gateway.exports.selection import refuse_tampered, resolve_selection
from services.gateway.workflows.errors import WorkflowNotFound, WorkflowRefused
from shared.events import ExportItem
from shared.ids import JobId
from shared.storage.keys import user_area

if TYPE_CHECKING:
    import asyncpg

    from shared.events import ExportFormat
    from shared.ids import ExportId, UserId
    from shared.storage import Storage

# What STAC roles an artifact gets, by the start of its file name.
_KINDS = {"ndvi": "ndvi", "rgb": "rgb", "stack": "cog"}


async def artifacts_of(
    connection: asyncpg.Connection, user_id: UserId, workflow_id: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each artifact the workflow's steps listed, with the result that listed it, in step order;
    only keys inside the owner's own storage area count (a step cannot hand out another's)."""
    owned = await connection.fetchval(
        "SELECT true FROM workflows WHERE id = $1 AND user_id = $2", workflow_id, user_id
    )
    if not owned:
        raise WorkflowNotFound(workflow_id)
    rows = await connection.fetch(
        "SELECT result FROM workflow_steps WHERE workflow_id = $1 AND status = 'completed'"
        " AND jsonb_typeof(result -> 'artifacts') = 'array' ORDER BY position",
        workflow_id,
    )
    area = user_area(user_id)
    return [
        (artifact, row["result"])
        for row in rows
        for artifact in row["result"]["artifacts"]
        if isinstance(artifact, dict) and str(artifact.get("key", "")).startswith(area)
    ]


async def artifact_named(
    connection: asyncpg.Connection, user_id: UserId, workflow_id: str, name: str
) -> dict[str, Any]:
    for artifact, _ in await artifacts_of(connection, user_id, workflow_id):
        if artifact.get("name") == name:
            return artifact
    raise NotFound(f"workflow {workflow_id} has no artifact named {name!r}")


async def export_workflow(
    connection: asyncpg.Connection,
    user_id: UserId,
    workflow_id: str,
    *,
    export_format: ExportFormat,
    storage: Storage | None = None,
) -> tuple[ExportId, Selection]:
    """Queue the export of every artifact of the workflow and its download steps' files.

    With `storage` (a request), files changed on disk since they were recorded are refused
    now; without it (an export step the tracker queues), the exporter's own check of each
    file's size and SHA-256 as it reads it fails the export instead."""
    made = await artifacts_of(connection, user_id, workflow_id)
    job_ids = await connection.fetch(
        "SELECT job_id FROM workflow_steps WHERE workflow_id = $1 AND job_id IS NOT NULL"
        " ORDER BY position",
        workflow_id,
    )
    downloads = await resolve_selection(
        connection, user_id, job_ids=[str(row["job_id"]) for row in job_ids]
    )
    items = (*downloads.items, *(_item(workflow_id, a, result) for a, result in made))
    if not items:
        raise WorkflowRefused("the workflow has no stored files or artifacts yet", status_code=409)
    selection = Selection(items=items, jobs=downloads.jobs)
    if storage is not None:
        await refuse_tampered(selection, storage)
    export_id = await insert_export(
        connection,
        user_id=user_id,
        job_id=None,
        export_format=export_format,
        include_metadata=True,
        selection=selection,
    )
    return export_id, selection


def _item(workflow_id: str, artifact: dict[str, Any], result: dict[str, Any]) -> ExportItem:
    """An artifact as the exporter packs it, dated and placed by its step's result."""
    name = str(artifact["name"])
    stem = PurePosixPath(name).stem
    metadata: dict[str, Any] = {}
    summary = result.get("summary")
    if not isinstance(summary, dict):
        summary = {}
    if bounds := summary.get("crop_bounds_wgs84") or result.get("bounds_wgs84"):
        metadata["bounds_wgs84"] = bounds
    if result.get("captured_at"):
        metadata["datetime"] = result["captured_at"]
    return ExportItem(
        file_id=str(uuid.uuid5(uuid.NAMESPACE_URL, artifact["key"])),
        job_id=JobId(workflow_id),
        filepath=artifact["key"],
        arcname=f"workflow/{name}",
        size=int(artifact["size"]),
        sha256=str(artifact["sha256"]),
        kind=_KINDS.get(stem, "artifact"),
        metadata=metadata or None,
    )
