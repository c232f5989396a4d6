"""What a running task may ask for: `Context`, injected into a parameter annotated with it.

Progress goes out as TaskProgress events (the tracker keeps the latest on the task's row),
throttled to one per `progress_interval_s` and the last one always sent before the outcome.
`progress` is a plain call, safe from a sync task's thread too. `enqueue` queues a follow-up
(TaskEnqueued: the tracker writes it) and `checkpoint` saves where the task is, in Redis and
(TaskCheckpointed) in PostgreSQL, for the next try's `checkpointed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from opentelemetry import propagate, trace

from shared.errors import PermanentError
from shared.events import TaskCheckpointed, TaskEnqueued, TaskEvent, TaskProgress
from shared.ids import TaskId, UserId, new_event_id, new_task_id

if TYPE_CHECKING:
    from services.tasks.limits import TaskLimits
    from shared.task_types import TaskType

Report = Callable[[TaskEvent], Awaitable[None]]
# A checkpoint is "where was I" (the next step, a cursor, the ids done), not the work's data:
# it rides the events stream and sits in Redis and on the task's row.
MAX_CHECKPOINT_BYTES = 1024 * 1024
_TRACER = trace.get_tracer(__name__)


class UnknownTask(LookupError):
    """`ctx.enqueue` named a task no live worker registered. Retried as any error is: a worker
    that runs it may be starting."""


class InvalidArguments(PermanentError):
    """`ctx.enqueue`'s arguments do not fit the task's signature; the message names the
    argument (`args.image_id: ...`). Uncaught, it fails the calling task without a retry."""


@dataclass(frozen=True, slots=True)
class FollowUpType:
    """What queueing a follow-up takes from its task's declaration."""

    queue: str
    priority: int
    unique: bool


class TaskTypes(Protocol):
    """The task types a follow-up is checked against before it is sent."""

    async def check(self, task: str, args: dict[str, Any]) -> FollowUpType:
        """The type of `task`; raises UnknownTask, or InvalidArguments naming the argument."""
        ...

    async def lookup(self, task: str) -> TaskType:
        """The registered type of `task`; raises shared.task_types.UnknownTaskType."""
        ...


class CheckpointStore(Protocol):
    """The workers' copy of each task's last checkpoint (JSON); PostgreSQL keeps the record."""

    async def save(self, task_id: TaskId, state: bytes) -> None: ...

    async def forget(self, task_id: TaskId) -> None: ...


class Context:
    """One try of one task, as the task sees it.

    Attributes:
        task_id: the task's id (what GET /api/v1/tasks/{task_id} takes).
        task: the task's registered name.
        attempt: 1 for the first try.
        logger: logs JSON lines carrying the task id and attempt (and the trace id).
        user_id: the owner, whose follow-ups `enqueue` queues (None outside a worker).
        checkpointed: the state the last `checkpoint` saved before this try began, or None:
            where to resume.
        workflow_id, step: the workflow and step this task is the work of, or None.
    """

    def __init__(
        self,
        *,
        task_id: TaskId,
        task: str,
        attempt: int,
        report: Report,
        is_cancelled: Callable[[], bool],
        user_id: UserId | None = None,
        checkpointed: Any = None,
        task_types: TaskTypes | None = None,
        checkpoints: CheckpointStore | None = None,
        progress_interval_s: float = 1.0,
        limits: TaskLimits | None = None,
        workflow_id: str | None = None,
        step: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.workflow_id = workflow_id
        self.step = step
        self.task = task
        self.attempt = attempt
        self.user_id = user_id
        self.checkpointed = checkpointed
        self.logger: logging.LoggerAdapter[logging.Logger] = logging.LoggerAdapter(
            logging.getLogger(f"downlink.task.{task}"),
            {"task_id": task_id, "task": task, "attempt": attempt},
        )
        self._report = report
        self._is_cancelled = is_cancelled
        self._interval_s = progress_interval_s
        self._loop = asyncio.get_running_loop()
        self._last_sent = 0.0
        self._waiting: TaskProgress | None = None
        self._sending: asyncio.Task[None] | None = None
        self._flushing = asyncio.Event()
        self._task_types = task_types
        self._checkpoints = checkpoints
        self._limits = limits

    def cancelled(self) -> bool:
        """Whether the task was cancelled; a running task is also cancelled at its next await."""
        return self._is_cancelled()

    async def rate_limit(self, key: str, n: int, per_s: float = 1.0) -> None:
        """Wait until one more call on `key` keeps it at `n` calls per `per_s` seconds across
        every worker (`await ctx.rate_limit("ncbi", 3)` before each request: 3 a second).

        Async only: a sync task runs in a thread, so declare the task `async def` and run its
        blocking part with `asyncio.to_thread`. Leave a margin against a strict server, since
        the network delays calls unevenly after they are granted.
        """
        if self._limits is None:
            raise RuntimeError("this Context has no limits: only a worker's Context enforces them")
        await self._limits.rate_limit(key, n, per_s)

    def concurrency(self, key: str, n: int) -> AbstractAsyncContextManager[None]:
        """`async with ctx.concurrency(key, n):` at most `n` holders of `key` across every
        worker; a holder whose worker dies frees its slot within a lease (5 s).

        Async only, like `rate_limit`.
        """
        if self._limits is None:
            raise RuntimeError("this Context has no limits: only a worker's Context enforces them")
        return self._limits.concurrency(key, n)

    async def enqueue(
        self,
        task: str,
        /,
        *,
        priority: int | None = None,
        defer_s: float | None = None,
        **args: Any,
    ) -> TaskId:
        """Queue a follow-up task for this task's owner (`await ctx.enqueue("thumbnail",
        image_id=7)`); its id, at once. It records this task as its parent and goes on in
        this task's trace.

        Its arguments are checked first, against this worker's definition of the task, else
        the one a live worker registered: UnknownTask, or InvalidArguments naming the
        argument, is raised here and nothing is sent. `priority` (1-10) defaults to the
        task's own; `defer_s` delays it. A `unique` task with an open twin (same arguments)
        is not queued again, and the id returned then names no task. Each call queues one
        task, so a try run again (a retry, a crash) queues again unless it resumes past the
        call from a checkpoint. Async only.
        """
        if self._task_types is None or self.user_id is None:
            raise RuntimeError("this Context cannot enqueue: only a worker's Context does")
        if priority is not None and not 1 <= priority <= 10:
            raise ValueError(f"priority: {priority} is not 1-10")
        if defer_s is not None and not 0 <= defer_s < float("inf"):
            raise ValueError(f"defer_s: {defer_s} is not a number of seconds >= 0")
        found = await self._task_types.check(task, args)
        task_id = new_task_id()
        attributes = {"downlink.task": task, "downlink.task_id": task_id}
        with _TRACER.start_as_current_span(
            f"enqueue {task}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ):
            headers: dict[str, str] = {}
            propagate.inject(headers)
            now = time.time()
            await self._report(
                TaskEnqueued(
                    event_id=new_event_id(),
                    task_id=task_id,
                    at=now,
                    parent_id=self.task_id,
                    user_id=self.user_id,
                    task=task,
                    args=args,
                    queue=found.queue,
                    priority=priority or found.priority,
                    run_at=None if defer_s is None else now + defer_s,
                    unique=found.unique,
                    trace_headers=headers,
                )
            )
        self.logger.info("queued %s as task %s", task, task_id, extra={"follow_up": task_id})
        return task_id

    async def checkpoint(self, state: Any) -> None:
        """Save where the task is (JSON, at most 1 MiB as JSON): a later try of it, after a
        crash, a retry or a Redis loss, finds it in `ctx.checkpointed`.

        For "where was I" state (the next step, a cursor, the ids done), not for the work's
        data. Saved once this returns. Async only.
        """
        try:
            encoded = msgspec.json.encode(state)
        except TypeError as exc:
            raise TypeError(f"checkpoint: the state is not JSON-serialisable: {exc}") from None
        if len(encoded) > MAX_CHECKPOINT_BYTES:
            raise ValueError(
                f"checkpoint: {len(encoded)} bytes as JSON; at most {MAX_CHECKPOINT_BYTES}"
            )
        if self._checkpoints is not None:
            await self._checkpoints.save(self.task_id, encoded)
        await self._report(
            TaskCheckpointed(
                event_id=new_event_id(),
                task_id=self.task_id,
                at=time.time(),
                state=msgspec.json.decode(encoded),
                attempt=self.attempt,
            )
        )

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Report how far the task is; kept on the task's row, survives restarts."""
        event = TaskProgress(
            event_id=new_event_id(),
            task_id=self.task_id,
            at=time.time(),
            done=done,
            total=total,
            message=message,
        )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._offer(event)
        else:
            self._loop.call_soon_threadsafe(self._offer, event)

    async def flush(self) -> None:
        """Send the progress still held back; the worker calls it before the outcome."""
        self._flushing.set()  # a send waiting out the throttle goes now
        if self._sending is not None:
            await asyncio.shield(self._sending)
        if self._waiting is not None:
            event, self._waiting = self._waiting, None
            await self._report(event)

    def _offer(self, event: TaskProgress) -> None:
        self._waiting = event
        if self._sending is not None and not self._sending.done():
            return
        due_in = self._last_sent + self._interval_s - time.monotonic()
        self._sending = self._loop.create_task(self._send_after(max(0.0, due_in)))

    async def _send_after(self, delay_s: float) -> None:
        if delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushing.wait(), delay_s)
        event, self._waiting = self._waiting, None
        if event is None:
            return
        self._last_sent = time.monotonic()
        try:
            await self._report(event)
        except Exception:
            # Progress is advice: losing a tick must not fail the task.
            self.logger.warning("progress report failed", exc_info=True)
