"""The process pool: CPU tasks off the event loop, with a timeout that kills a stuck worker.

`concurrent.futures` cannot cancel a task that is running, so the pool is made of `size`
single-process executors ("slots"). A task past its timeout gets its own process SIGKILLed and
its slot replaced by a fresh one; the other tasks run on undisturbed. Workers start with the
'spawn' method: no forked copy of the event loop, sockets or locks of the service. They leave
SIGINT and SIGTERM to the service, and exit when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from shared.errors import TransientError

if TYPE_CHECKING:
    from types import TracebackType

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# A worker is replaced after this many tasks: GDAL and numpy keep caches and arenas that only
# grow over a long life, and a fresh process costs well under a second.
RECYCLE_AFTER_TASKS = 500
_REAP_TIMEOUT_S = 10.0
_PARENT_CHECK_S = 0.5


class TaskTimeout(TransientError):
    """A task ran past its timeout; its worker was killed and replaced."""


class WorkerCrashed(TransientError):
    """The worker process died under a task (a segfault in a library, the OOM killer)."""


@dataclass(slots=True)
class _Slot:
    """One executor with exactly one worker process, whose pid we know so we can kill it."""

    executor: ProcessPoolExecutor
    pid: int
    tasks_run: int = 0


class WorkerPool:
    """`size` worker processes; `await pool.run(fn, *args, timeout_s=...)` runs `fn` in one.

    Use it as an async context manager: entering starts every worker, leaving stops them
    (and kills any still running an abandoned task).
    """

    def __init__(
        self,
        size: int,
        *,
        initializer: Callable[[int], None] | None = None,
        start_method: str = "spawn",
        recycle_after_tasks: int = RECYCLE_AFTER_TASKS,
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got {size}")
        self.size = size
        self._initializer = initializer
        self._context = multiprocessing.get_context(start_method)
        self._recycle_after = recycle_after_tasks
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._busy: set[int] = set()
        self._slots: list[_Slot] = []
        self.restarts = 0

    async def __aenter__(self) -> WorkerPool:
        slots = await asyncio.gather(*(self._start_slot() for _ in range(self.size)))
        for slot in slots:
            self._idle.put_nowait(slot)
        log.info("process pool started", extra={"workers": self.size, "pids": self.pids})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for slot in list(self._slots):
            if slot.pid in self._busy:
                # An abandoned task (shutdown grace ran out): its message stays pending and is
                # reclaimed elsewhere, so the process has nothing left to finish.
                _kill(slot.pid)
        await asyncio.gather(*(self._reap(slot) for slot in self._slots))
        self._slots.clear()

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [slot.pid for slot in self._slots]

    async def run(
        self, timeout_s: float, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run `func(*args, **kwargs)` in a worker; TaskTimeout after `timeout_s` seconds.

        `func` and its arguments cross a process boundary: module-level functions and plain
        values only. Exceptions raised by `func` are re-raised here.
        """
        slot = await self._idle.get()
        self._busy.add(slot.pid)
        replace = kill = False
        try:
            future = asyncio.wrap_future(slot.executor.submit(func, *args, **kwargs))
            try:
                async with asyncio.timeout(timeout_s):
                    result: R = await future
            except TimeoutError:
                replace = kill = True
                log.warning(
                    "task %s passed its %.0f s timeout; killing worker %d",
                    getattr(func, "__name__", func),
                    timeout_s,
                    slot.pid,
                    extra={"pid": slot.pid, "timeout_s": timeout_s},
                )
                raise TaskTimeout(
                    f"{getattr(func, '__name__', 'task')} ran past its {timeout_s:g} s timeout"
                ) from None
            except BrokenProcessPool:
                replace = kill = True
                raise WorkerCrashed(
                    f"the worker process died while running {getattr(func, '__name__', 'task')}"
                ) from None
            except asyncio.CancelledError:
                # Nobody waits for the result any more: free the slot for the next task now.
                replace = kill = not future.done()
                raise
            slot.tasks_run += 1
            replace = slot.tasks_run >= self._recycle_after
            return result
        finally:
            self._busy.discard(slot.pid)
            if replace:
                # Shielded: a cancelled caller must still leave a working slot behind.
                await asyncio.shield(self._replace(slot, kill=kill))
            else:
                self._idle.put_nowait(slot)

    async def _start_slot(self) -> _Slot:
        executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._context,
            initializer=_start_worker,
            initargs=(os.getpid(), self._initializer),
        )
        # The first task makes the executor start its one process, which tells us its pid.
        pid = await asyncio.wrap_future(executor.submit(os.getpid))
        slot = _Slot(executor=executor, pid=pid)
        self._slots.append(slot)
        return slot

    async def _replace(self, slot: _Slot, *, kill: bool) -> None:
        if kill:
            _kill(slot.pid)
        await self._reap(slot)
        self._slots.remove(slot)
        self.restarts += 1
        try:
            fresh = await self._start_slot()
        except Exception:
            log.exception("could not start a replacement worker; the pool shrinks by one")
            return
        log.info("worker %d replaced by %d", slot.pid, fresh.pid)
        self._idle.put_nowait(fresh)

    @staticmethod
    async def _reap(slot: _Slot) -> None:
        # In a thread: shutdown(wait=True) joins the worker, which must not block the loop.
        # Bounded, since a killed process is gone within milliseconds and an idle one exits
        # at once; should it hang anyway, the executor's own thread finishes the job later.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.to_thread(slot.executor.shutdown, wait=True, cancel_futures=True),
                _REAP_TIMEOUT_S,
            )


def _start_worker(parent_pid: int, initializer: Callable[[int], None] | None) -> None:
    """Set up a worker process: signals, an exit when the parent dies, then `initializer`."""
    # The service owns shutdown: a Ctrl-C or SIGTERM sent to the whole process group must not
    # kill a task the service is still draining; the service stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(
        target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True
    ).start()
    if initializer is not None:
        initializer(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_CHECK_S)
    os._exit(1)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
