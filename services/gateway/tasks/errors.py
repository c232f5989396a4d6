"""Errors of the tasks area, each with its HTTP meaning (app.py maps GatewayError once).

GatewayError (services.gateway.errors)
├── TaskNotFound       404  no such task of the caller
├── BatchTooLarge      413  a batch of more tasks than one request may hold
├── BatchItemRefused   the status of the item's own error; names the item (`tasks[3].args.a`)
└── TaskAlreadyEnded   409  cancel of a task that ended

TaskTypeError (shared.task_types: the gateway and the workers' ctx.enqueue check alike)
├── UnknownTaskType    404  no live worker registered that task name
├── InvalidArguments   422  the arguments do not match the task's signature; names the argument
└── ArgumentsTooLarge  413  the arguments are over 1 MiB as JSON
"""

from __future__ import annotations

from services.gateway.errors import GatewayError, NotFound
from shared.task_types import ArgumentsTooLarge, InvalidArguments, TaskTypeError, UnknownTaskType

TASK_TYPE_STATUS: dict[type[TaskTypeError], int] = {
    UnknownTaskType: 404,
    InvalidArguments: 422,
    ArgumentsTooLarge: 413,
}


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} not found")


class BatchTooLarge(GatewayError):
    status_code = 413

    def __init__(self, given: int, most: int) -> None:
        super().__init__(f"tasks: {given} given; at most {most} per request (split the batch)")


class BatchItemRefused(GatewayError):
    """One task of a batch is refused (so all are); the message starts with its place."""

    def __init__(self, index: int, error: TaskTypeError) -> None:
        field = "task: " if isinstance(error, UnknownTaskType) else ""
        super().__init__(f"tasks[{index}].{field}{error}")
        self.status_code = TASK_TYPE_STATUS[type(error)]


class TaskAlreadyEnded(GatewayError):
    status_code = 409

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id} already ended: {status}")
