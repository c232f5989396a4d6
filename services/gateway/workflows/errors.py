"""Errors of the workflows area, each with its HTTP meaning (app.py maps GatewayError once).

GatewayError (services.gateway.errors)
├── WorkflowNotFound      404  no such workflow of the caller
├── WorkflowRefused       422  a DAG with a cycle, a dangling dependency, bad arguments
│                         (404 when a step names a task no live worker registered)
└── WorkflowAlreadyEnded  409  cancel of a workflow that ended
"""

from __future__ import annotations

from services.gateway.errors import GatewayError, NotFound


class WorkflowNotFound(NotFound):
    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id} not found")


class WorkflowRefused(GatewayError):
    """The message starts with the field at fault (`steps[2].after: ...`)."""

    def __init__(self, message: str, *, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


class WorkflowAlreadyEnded(GatewayError):
    status_code = 409

    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(f"workflow {workflow_id} already ended: {status}")
