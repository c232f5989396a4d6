"""The task types live workers registered (read from Redis), and checking arguments against them.

Workers write `downlink:task-types:{consumer}` with each heartbeat (services.tasks.registry),
so this is what can run right now. Arguments are checked with the JSON schema the worker made
from the function's signature, so a bad argument answers 422 at enqueue, not an hour later.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import jsonschema
import msgspec

from services.gateway.tasks.errors import ArgumentsTooLarge, InvalidArguments, UnknownTaskType
from services.gateway.tasks.records import TaskType
from shared.redis_client import hashes_under
from shared.streams import TASK_TYPES_KEY_PREFIX

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

MAX_ARGS_BYTES = 1024 * 1024
_DECODER = msgspec.json.Decoder(TaskType)


async def task_types(redis: Redis) -> list[TaskType]:
    """Every task a live worker registered, one entry per distinct definition, by name.

    Workers that registered one name with different policies or signatures are all listed
    (and a warning logged): which of them runs a task is up to the queue.
    """
    hashes = await hashes_under(redis, TASK_TYPES_KEY_PREFIX)
    distinct: dict[bytes, TaskType] = {}
    for raw in hashes:
        for value in (raw or {}).values():
            try:
                found = _DECODER.decode(value)
            except msgspec.DecodeError:
                continue  # another version's shape: nothing this gateway can check against
            definition = msgspec.json.encode(
                [found.name, found.queue, found.policy, found.args_schema]
            )
            distinct.setdefault(definition, found)
    listed = sorted(distinct.values(), key=lambda t: (t.name, t.queue, t.worker))
    names = [t.name for t in listed]
    for name in sorted({n for n in names if names.count(n) > 1}):
        log.warning("task %s is registered with different policies or signatures", name)
    return listed


async def task_type(redis: Redis, name: str) -> TaskType:
    """The registered type of `name`; UnknownTaskType when no live worker has it."""
    for found in await task_types(redis):
        if found.name == name:
            return found
    raise UnknownTaskType(name)


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
