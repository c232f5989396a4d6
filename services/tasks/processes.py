"""The worker's process pool for `@task(executor="process")`: CPU work off the event loop.

It is services.processor's WorkerPool (whose processes leave SIGTERM to the worker and exit
with it), started at the first process task (a worker without one spawns nothing) and stopped
with the worker. The function crosses to the child by name
(module and qualified name): `@task` put its TaskDefinition in its place in the module, so
pickling the function itself would find another object there and refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import Any

from opentelemetry import trace

from services.tasks.definitions import TaskDefinition
from shared.process_pool import WorkerPool

tracer = trace.get_tracer("downlink.tasks")


class TaskProcesses:
    """Up to `size` processes, started when the first process task runs; `aclose()` stops
    them (`contextlib.aclosing`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._stack = contextlib.AsyncExitStack()
        self._starting: asyncio.Task[WorkerPool] | None = None

    async def aclose(self) -> None:
        """Stop the pool, if one started."""
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        await self._stack.aclose()  # kills the processes of abandoned tasks, reaps the rest

    async def run(
        self, timeout_s: float, definition: TaskDefinition, kwargs: dict[str, Any]
    ) -> Any:
        """`definition`'s function called with `kwargs` in a pool process; TaskTimeout (and
        the process killed, a fresh one in its place) past `timeout_s`."""
        with tracer.start_as_current_span(
            "task.process", attributes={"downlink.task": definition.name}
        ):
            pool = await self._pool()
            function = definition.function
            return await pool.run(
                timeout_s, call_by_name, function.__module__, function.__qualname__, kwargs
            )

    async def _pool(self) -> WorkerPool:
        if self._starting is None:
            # A task of its own, so a first caller cancelled mid-start leaves no half a pool.
            self._starting = asyncio.create_task(
                self._stack.enter_async_context(WorkerPool(self.size))
            )
        try:
            return await asyncio.shield(self._starting)
        except Exception:
            self._starting = None  # the next process task tries again
            raise


def call_by_name(module: str, qualname: str, kwargs: dict[str, Any]) -> Any:
    """In the child: import the task's module and call its function with `kwargs`."""
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    function = target.function if isinstance(target, TaskDefinition) else target
    return function(**kwargs)
