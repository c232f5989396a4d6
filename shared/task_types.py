"""Task statuses, task types as live workers register them, and checking arguments against them.

Shared by the gateway (enqueue) and the task workers (`ctx.enqueue` checks a follow-up the same
way, with the same messages), so it lives here rather than in either. Arguments are checked
with the JSON schema the worker made from the function's signature, so a bad argument answers
422 at enqueue, not an hour later. Reading the registry from Redis is shared.task_catalogue's;
this module loads no Redis client, so `import downlink` stays light.
"""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any

import jsonschema
import msgspec

from shared.errors import DownlinkError

MAX_ARGS_BYTES = 1024 * 1024


class TaskStatus(StrEnum):
    """Where a task is; all but pending and running are final."""

    PENDING = "pending"  # queued, delayed, or waiting out a retry's backoff
    RUNNING = "running"  # a worker started a try
    COMPLETED = "completed"  # returned; `result` holds its value
    FAILED = "failed"  # a Permanent error or arguments that no longer fit; no dead letter
    CANCELLED = "cancelled"  # cancelled by its owner
    DEAD = "dead"  # its last try failed or its workers kept dying; in the dead letters


class TaskType(msgspec.Struct, frozen=True, kw_only=True):
    """A task as a live worker registered it (services.tasks.registry writes the same shape)."""

    name: str
    queue: str
    policy: dict[str, Any]
    args_schema: dict[str, Any]
    worker: str = ""


class TaskTypeError(DownlinkError):
    """A task cannot be enqueued as asked; the message names what is wrong."""


class UnknownTaskType(TaskTypeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no worker has registered a task named {name!r}")


class InvalidArguments(TaskTypeError):
    """The message starts with the argument at fault (`args.image_id: ...`)."""


class ArgumentsTooLarge(TaskTypeError):
    """The arguments are over MAX_ARGS_BYTES as JSON."""


def check_arguments(task: TaskType, args: dict[str, Any]) -> None:
    """Raise ArgumentsTooLarge or InvalidArguments (naming the argument) unless `args` fit."""
    size = len(msgspec.json.encode(args))
    if size > MAX_ARGS_BYTES:
        raise ArgumentsTooLarge(f"args: {size} bytes as JSON; at most {MAX_ARGS_BYTES}")
    validator = _validator(msgspec.json.encode(task.args_schema))
    error = jsonschema.exceptions.best_match(validator.iter_errors(args))
    if error is None:
        return
    where = ".".join(str(part) for part in ("args", *error.absolute_path))
    if error.validator == "required":
        # "'image_id' is a required property": the argument is the quoted name.
        missing = error.message.split("'")[1] if error.message.count("'") >= 2 else "?"
        raise InvalidArguments(f"{where}.{missing}: missing required argument")
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        unexpected = sorted(str(name) for name in error.instance if name not in known)
        raise InvalidArguments(f"{where}.{unexpected[0]}: unexpected argument")
    raise InvalidArguments(f"{where}: {error.message}")


@functools.lru_cache(maxsize=256)
def _validator(schema: bytes) -> jsonschema.Draft202012Validator:
    # Built once per registered signature, not on every enqueue (a task's schema rarely changes).
    return jsonschema.Draft202012Validator(msgspec.json.decode(schema))
