"""Launching a ready step: its task enqueued, or its download job submitted, with its parents'
results fed in, in the caller's transaction (the one that ended its last parent)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from services.gateway.errors import GatewayError
from services.gateway.jobs.specs import SubmitRequest
from services.gateway.jobs.submit import submit_job
from services.gateway.tasks.enqueueing import enqueue
from services.gateway.tasks.records import NewTask
from services.gateway.workflows.artifacts import export_workflow
from shared.ids import TaskId, UserId
from shared.telemetry import span_context_of

if TYPE_CHECKING:
    import asyncpg

    from shared.events import ExportFormat


async def launch_step(
    connection: asyncpg.Connection,
    *,
    workflow_id: str,
    user_id: str,
    key: str,
    trace_headers: dict[str, str],
) -> str | None:
    """Queue step `key`'s work; what stops it from running (the step then fails), or None."""
    step = await connection.fetchrow(
        "SELECT kind, task, queue, priority, args, input, after, gather FROM workflow_steps"
        " WHERE workflow_id = $1 AND key = $2 AND status = 'waiting' FOR UPDATE",
        workflow_id,
        key,
    )
    if step is None:
        return None  # launched already
    args = dict(step["args"])
    if step["input"] is not None:
        fed = await _fed(connection, workflow_id, step["after"], gather=step["gather"])
        args[step["input"]] = fed
    if step["kind"] == "download":
        return await _submit_download(
            connection, workflow_id, user_id, key, args, trace_headers=trace_headers
        )
    if step["kind"] == "export":
        return await _queue_export(connection, workflow_id, user_id, key, args["format"])
    parent = span_context_of(trace_headers.get("traceparent", ""))
    enqueued = await enqueue(
        connection,
        NewTask(
            user_id=UserId(user_id),
            task=step["task"],
            queue=step["queue"],
            args=args,
            priority=step["priority"],
            workflow_id=workflow_id,
            step=key,
        ),
        trace_id=None if parent is None else format(parent.trace_id, "032x"),
        trace_headers=trace_headers,
    )
    await _launched(connection, workflow_id, key, task_id=enqueued.task_id)
    return None


async def _fed(
    connection: asyncpg.Connection, workflow_id: str, after: list[str], *, gather: bool
) -> Any:
    """The parents' results: one parent's as it is, several (or a fan-in's) as a list in
    `after`'s order; a parent that did not succeed (allow_partial) is left out."""
    rows = await connection.fetch(
        "SELECT key, result FROM workflow_steps WHERE workflow_id = $1"
        " AND key = ANY($2::text[]) AND status = 'completed'",
        workflow_id,
        after,
    )
    by_key = {row["key"]: row["result"] for row in rows}
    if len(after) == 1 and not gather:
        return by_key.get(after[0])
    return [by_key[parent] for parent in after if parent in by_key]


async def _submit_download(
    connection: asyncpg.Connection,
    workflow_id: str,
    user_id: str,
    key: str,
    args: dict[str, Any],
    *,
    trace_headers: dict[str, str],
) -> str | None:
    try:
        body = msgspec.convert(_with_files(args), SubmitRequest)
    except msgspec.ValidationError as exc:
        return f"the download job cannot be submitted: {exc}"
    submitted = await submit_job(
        connection,
        body.new_job(UserId(user_id), idempotency_key=f"workflow:{workflow_id}:{key}"),
        trace_headers=trace_headers,
    )
    await connection.execute(
        "UPDATE jobs SET workflow_id = $2, step = $3 WHERE id = $1",
        submitted.job_id,
        workflow_id,
        key,
    )
    await _launched(connection, workflow_id, key, job_id=submitted.job_id)
    return None


async def _queue_export(
    connection: asyncpg.Connection,
    workflow_id: str,
    user_id: str,
    key: str,
    export_format: ExportFormat,
) -> str | None:
    try:
        export_id, _ = await export_workflow(
            connection, UserId(user_id), workflow_id, export_format=export_format
        )
    except GatewayError as exc:
        return f"the export cannot be queued: {exc}"
    await connection.execute(
        "UPDATE exports SET workflow_id = $2, step = $3 WHERE id = $1", export_id, workflow_id, key
    )
    await _launched(connection, workflow_id, key, export_id=export_id)
    return None


def _with_files(args: dict[str, Any]) -> dict[str, Any]:
    """A download step's body, with fed files in the shapes a parent may give them: a list of
    URLs or of {url, filename?, sha256?}, or a result holding such a list under `files`."""
    files = args.get("files")
    if isinstance(files, dict):
        files = files.get("files")
    if not isinstance(files, list):
        return args
    urls = [item for item in files if isinstance(item, str)]
    entries = [
        {name: item[name] for name in ("url", "filename", "sha256") if item.get(name) is not None}
        for item in files
        if isinstance(item, dict)
    ]
    body = {name: value for name, value in args.items() if name != "files"}
    if urls:
        body["urls"] = [*body.get("urls", []), *urls]
    if entries:
        body["files"] = entries
    return body


async def _launched(
    connection: asyncpg.Connection,
    workflow_id: str,
    key: str,
    *,
    task_id: TaskId | None = None,
    job_id: str | None = None,
    export_id: str | None = None,
) -> None:
    await connection.execute(
        "UPDATE workflow_steps SET status = 'launched', task_id = $3, job_id = $4,"
        " export_id = $5, launched_at = now() WHERE workflow_id = $1 AND key = $2",
        workflow_id,
        key,
        task_id,
        job_id,
        export_id,
    )
