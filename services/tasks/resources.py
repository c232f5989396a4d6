"""What one task worker process opens for its handler: the registered tasks, its cancel watcher,
the fleet-wide limits, and the process pool of executor="process" tasks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.tasks.cancellations import TaskCancellations
from services.tasks.checkpoints import RedisCheckpoints
from services.tasks.followups import FollowUpTypes
from services.tasks.handlers import TaskDeps
from services.tasks.limits import TaskLimits
from services.tasks.processes import TaskProcesses
from services.tasks.registry import keep_registered
from services.tasks.starts import RedisStarts

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from services.tasks.definitions import TaskDefinition
    from shared.runner import WorkerContext


@dataclass(frozen=True, slots=True)
class TaskWorker:
    """The handler's dependencies, and what runs beside them (cancel watcher, registration)."""

    deps: TaskDeps
    cancellations: TaskCancellations
    redis: Redis

    async def keep_registered(self) -> None:
        await keep_registered(self.redis, self.deps.worker, self.deps.tasks)


@dataclass(frozen=True, slots=True)
class TaskResources:
    """The worker's resources factory, for the tasks it was started with."""

    tasks: Mapping[str, TaskDefinition]
    default_timeout_s: float
    max_jobs: int = 10  # tasks at once, so also the most pool processes (and no more than cores)

    @contextlib.asynccontextmanager
    async def __call__(self, context: WorkerContext) -> AsyncIterator[TaskWorker]:
        cancellations = TaskCancellations(context.redis)
        processes = TaskProcesses(min(self.max_jobs, os.cpu_count() or 1))
        async with TaskLimits(context.redis) as limits, contextlib.aclosing(processes):
            deps = TaskDeps(
                tasks=self.tasks,
                publisher=context.publisher,
                cancellations=cancellations,
                worker=context.worker,
                default_timeout_s=self.default_timeout_s,
                progress_interval_s=context.settings.progress_interval_s,
                limits=limits,
                processes=processes,
                task_types=FollowUpTypes(context.redis, self.tasks),
                checkpoints=RedisCheckpoints(context.redis, ttl_s=context.settings.retention_s),
                starts=RedisStarts(context.redis),
            )
            yield TaskWorker(deps, cancellations, context.redis)
