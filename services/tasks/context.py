"""What a running task may ask for: `Context`, injected into a parameter annotated with it.

Progress goes out as TaskProgress events (the tracker keeps the latest on the task's row),
throttled to one per `progress_interval_s` and the last one always sent before the outcome.
`progress` is a plain call, safe from a sync task's thread too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from shared.events import TaskProgress
from shared.ids import TaskId, new_event_id

Report = Callable[[TaskProgress], Awaitable[None]]


class Context:
    """One try of one task, as the task sees it.

    Attributes:
        task_id: the task's id (what GET /api/v1/tasks/{task_id} takes).
        task: the task's registered name.
        attempt: 1 for the first try.
        logger: logs JSON lines carrying the task id and attempt (and the trace id).
    """

    def __init__(
        self,
        *,
        task_id: TaskId,
        task: str,
        attempt: int,
        report: Report,
        is_cancelled: Callable[[], bool],
        progress_interval_s: float = 1.0,
    ) -> None:
        self.task_id = task_id
        self.task = task
        self.attempt = attempt
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

    def cancelled(self) -> bool:
        """Whether the task was cancelled; a running task is also cancelled at its next await."""
        return self._is_cancelled()

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
