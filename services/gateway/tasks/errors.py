"""Errors of the tasks area, each with its HTTP meaning (app.py maps GatewayError once).

GatewayError (services.gateway.errors)
├── TaskNotFound       404  no such task of the caller
├── UnknownTaskType    404  no live worker registered that task name
├── InvalidArguments   422  the arguments do not match the task's signature; names the argument
├── ArgumentsTooLarge  413  the arguments are over 1 MiB as JSON
└── TaskAlreadyEnded   409  cancel of a task that ended
"""

from __future__ import annotations

from services.gateway.errors import GatewayError, NotFound


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")


class UnknownTaskType(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"no worker has registered a task named {name!r}")


class InvalidArguments(GatewayError):
    """The message starts with the argument at fault (`args.image_id: ...`)."""

    status_code = 422


class ArgumentsTooLarge(GatewayError):
    status_code = 413


class TaskAlreadyEnded(GatewayError):
    status_code = 409

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id} already ended: {status}")
