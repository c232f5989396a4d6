"""Checking a follow-up (`ctx.enqueue`) in the worker, before anything is sent.

Against the worker's own definition of the task when it has one, else against the live
catalogue in Redis, with the gateway's own check: a follow-up is refused for what
POST /api/v1/tasks would refuse, with the same message naming the argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from services.tasks.context import FollowUpType, InvalidArguments, UnknownTask
from shared.task_catalogue import Catalogue
from shared.task_types import ArgumentsTooLarge, TaskType, UnknownTaskType, check_arguments
from shared.task_types import InvalidArguments as ArgumentsMismatch

if TYPE_CHECKING:
    from collections.abc import Mapping

    from redis.asyncio import Redis

    from services.tasks.definitions import TaskDefinition


class FollowUpTypes:
    """What a worker checks its follow-ups against (a services.tasks.context.TaskTypes)."""

    def __init__(self, redis: Redis, own: Mapping[str, TaskDefinition]) -> None:
        self._catalogue = Catalogue(redis)
        self._own = {
            name: TaskType(
                name=name,
                queue=definition.policy.queue,
                policy=msgspec.to_builtins(definition.policy),
                args_schema=definition.schema(),
            )
            for name, definition in own.items()
        }

    async def lookup(self, task: str) -> TaskType:
        return self._own.get(task) or await self._catalogue.task_type(task)

    async def check(self, task: str, args: dict[str, Any]) -> FollowUpType:
        try:
            found = await self.lookup(task)
        except UnknownTaskType as exc:
            raise UnknownTask(f"ctx.enqueue: {exc}") from None
        try:
            check_arguments(found, args)
        except (ArgumentsMismatch, ArgumentsTooLarge) as exc:
            raise InvalidArguments(f"{exc} (ctx.enqueue of {task})") from None
        return FollowUpType(
            queue=found.queue,
            priority=int(found.policy.get("priority", 5)),
            unique=bool(found.policy.get("unique", False)),
        )
