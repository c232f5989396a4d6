"""Which tasks a worker runs: loading the `--tasks` modules, and registering them in Redis.

Each live task worker keeps a hash `downlink:task-types:{consumer}` of name -> definition
(queue, policy, argument schema), refreshed with every heartbeat and expiring with the worker,
so GET /api/v1/task-types shows what running workers can do and the gateway checks arguments
against it.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from services.tasks.definitions import TaskDefinition, TaskPolicy
from shared.errors import ConfigError
from shared.redis_client import hashes_under
from shared.streams import TASK_TYPES_KEY_PREFIX, task_types_key
from shared.workers import EXPIRY_S, HEARTBEAT_S

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class RegisteredTask(msgspec.Struct, frozen=True, kw_only=True):
    """One task as a worker registered it (the value of its field in the worker's hash)."""

    name: str
    queue: str
    policy: TaskPolicy
    args_schema: dict[str, Any]
    worker: str = ""


# Installed packages name their task modules here: `[project.entry-points."downlink.tasks"]`
# `imageboard = "imageboard.tasks"`; a worker started without --tasks runs them.
ENTRY_POINT_GROUP = "downlink.tasks"


def discovered_modules() -> list[str]:
    """The task modules installed packages declare in the `downlink.tasks` entry point group."""
    return sorted(
        {entry.value for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    )


def load_tasks(modules: Iterable[str], *, queue: str) -> dict[str, TaskDefinition]:
    """Import `modules` and collect their `@task` definitions on `queue`, by name.

    Raises:
        ConfigError: a module does not import, two definitions share a name, or none is on
            the queue.
    """
    modules = list(modules)
    found: dict[str, TaskDefinition] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"--tasks {module_name}: {exc}") from exc
        for value in vars(module).values():
            if not isinstance(value, TaskDefinition) or value.policy.queue != queue:
                continue
            other = found.get(value.name)
            if other is not None and other is not value:
                raise ConfigError(f"task {value.name!r} is defined twice ({module_name})")
            found[value.name] = value
    if not found:
        raise ConfigError(f"no @task on queue {queue!r} in {', '.join(modules) or 'no module'}")
    return found


def registered(tasks: Mapping[str, TaskDefinition], worker: str) -> dict[str, bytes]:
    """The worker's hash: each task's name -> its RegisteredTask as JSON."""
    return {
        name: msgspec.json.encode(
            RegisteredTask(
                name=name,
                queue=definition.policy.queue,
                policy=definition.policy,
                args_schema=definition.schema(),
                worker=worker,
            )
        )
        for name, definition in tasks.items()
    }


async def keep_registered(
    redis: Redis,
    worker: str,
    tasks: Mapping[str, TaskDefinition],
    *,
    heartbeat_s: float = HEARTBEAT_S,
) -> None:
    """Refresh the worker's task types every heartbeat until cancelled; removed on the way out."""
    key = task_types_key(worker)
    fields = registered(tasks, worker)
    await _warn_of_conflicts(redis, worker, fields)
    try:
        while True:
            try:
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # redis-py's Mapping is too narrow
                    pipe.pexpire(key, int(EXPIRY_S * 1000))
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("registering task types failed: %s", exc)
            await asyncio.sleep(heartbeat_s)
    finally:
        try:
            await asyncio.shield(redis.delete(key))
        except (RedisError, OSError) as exc:
            log.warning("could not remove the task types of %s: %s", worker, exc)


async def list_registered(redis: Redis) -> list[RegisteredTask]:
    """Every task a live worker registered, one entry per worker, by name then worker."""
    hashes = await hashes_under(redis, TASK_TYPES_KEY_PREFIX)
    decoder = msgspec.json.Decoder(RegisteredTask)
    found: list[RegisteredTask] = []
    for raw in hashes:
        for value in (raw or {}).values():
            try:
                found.append(decoder.decode(value))
            except msgspec.DecodeError:
                continue  # another version's entry: not one this gateway can check against
    return sorted(found, key=lambda t: (t.name, t.worker))


async def _warn_of_conflicts(redis: Redis, worker: str, fields: Mapping[str, bytes]) -> None:
    try:
        others = [t for t in await list_registered(redis) if t.worker != worker]
    except (RedisError, OSError):
        return
    mine = {name: msgspec.json.decode(value, type=RegisteredTask) for name, value in fields.items()}
    for other in others:
        own = mine.get(other.name)
        if own is not None and (own.policy, own.args_schema) != (other.policy, other.args_schema):
            log.warning(
                "task %s is registered by %s with a different policy or signature",
                other.name,
                other.worker,
                extra={"task": other.name, "other_worker": other.worker},
            )
