"""Operations on workflows: submit (a block built in Python, an inline DAG, or a named one),
status, waiting for the end, listing, cancel, export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from downlink.client.models import (
    ExportCreated,
    Workflow,
    WorkflowCancelled,
    WorkflowPage,
    WorkflowSubmitted,
)
from downlink.client.protocol import API, FIRST_POLL_S, MAX_POLL_S, Deadline, Operation, Sleep, call

if TYPE_CHECKING:
    from collections.abc import Mapping

ENDED = frozenset({"completed", "partial", "failed", "cancelled"})


class Block(Protocol):
    """A workflow built with downlink.chain / group / chord / Step."""

    def to_spec(self, *, allow_partial: bool = False) -> Any: ...


def submit_workflow(
    flow: Block | str,
    args: Mapping[str, Any] | None,
    *,
    allow_partial: bool,
    idempotency_key: str | None,
) -> Operation[WorkflowSubmitted]:
    """`flow` is a block (its DAG is sent) or the name of a registered `@workflow`."""
    body: dict[str, Any]
    if isinstance(flow, str):
        body = {"workflow": flow, "args": dict(args or {})}
    else:
        spec = msgspec.to_builtins(flow.to_spec(allow_partial=allow_partial))
        body = {"steps": spec["steps"]}
    body["allow_partial"] = allow_partial
    headers = {"Idempotency-Key": idempotency_key}
    return (
        yield from call("POST", f"{API}/workflows", WorkflowSubmitted, json=body, headers=headers)
    )


def get_workflow(workflow_id: str) -> Operation[Workflow]:
    return (yield from call("GET", f"{API}/workflows/{workflow_id}", Workflow))


def wait_workflow(workflow_id: str, timeout_s: float | None) -> Operation[Workflow]:
    """The workflow once it has ended, whichever way (its status says which)."""
    limit = Deadline(timeout_s)
    pause_s = FIRST_POLL_S
    while True:
        found = yield from get_workflow(workflow_id)
        if found.status in ENDED:
            return found
        yield Sleep(min(pause_s, limit.left(f"workflow {workflow_id} still {found.status}")))
        pause_s = min(pause_s * 1.5, MAX_POLL_S)


def list_workflows(*, status: str | None, page: int, per_page: int) -> Operation[WorkflowPage]:
    params = {"status": status, "page": page, "per_page": per_page}
    return (yield from call("GET", f"{API}/workflows", WorkflowPage, params=params))


def cancel_workflow(workflow_id: str) -> Operation[WorkflowCancelled]:
    return (yield from call("POST", f"{API}/workflows/{workflow_id}/cancel", WorkflowCancelled))


def export_workflow(workflow_id: str, export_format: str) -> Operation[ExportCreated]:
    path = f"{API}/workflows/{workflow_id}/export"
    return (yield from call("POST", path, ExportCreated, json={"format": export_format}))
