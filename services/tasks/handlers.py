"""Running one try of a user-defined task: a RunTask in, events out, a domain error to retry.

Plain async functions over Protocol-typed ports; no framework or Redis imports here. The
consumer's policy is per consumer, so the task's own one decides here: a failed try raises
TaskRetry (a TransientError carrying the task's backoff) while tries remain, else TaskDead (a
PermanentError), and the consumer dead-letters it. A task that fails for good on its own (a
Permanent error, arguments that no longer fit) is reported failed and acknowledged instead:
running it again would fail the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from opentelemetry import trace

from services.tasks.canvas import Canvas
from services.tasks.context import CheckpointStore, Context, TaskTypes
from services.tasks.definitions import DEFAULT_TIMEOUT_S
from shared.errors import JobCancelled, PermanentError, TransientError
from shared.events import TaskCheckpointed, TaskFailed, TaskRetrying, TaskStarted, TaskSucceeded
from shared.ids import new_event_id
from shared.workflows import WorkflowInvalid, expansion, resolve

if TYPE_CHECKING:
    from services.tasks.definitions import TaskDefinition
    from services.tasks.limits import TaskLimits
    from services.tasks.processes import TaskProcesses
    from shared.broker import EventPublisher
    from shared.events import RunTask, TaskEvent
    from shared.ids import TaskId

log = logging.getLogger(__name__)

# Between the soft timeout (TimeoutError raised inside the task) and the hard cancel, when
# the task has no soft timeout of its own.
HARD_GRACE_S = 5.0
# A try cut short by its worker's death (SIGKILL, OOM) is run again even past max_tries, since
# the task did not fail; but only this many times, or a task that kills its worker would loop.
CRASHES_FORGIVEN = 2
# A traceback is for people; a runaway recursion's must not bloat every event and row.
MAX_ERROR_CHARS = 16_000


class Cancellations(Protocol):
    """The cancels heard so far, and the scope that aborts a running task on a cancel."""

    def knows_cancelled(self, task_id: str) -> bool: ...

    def watch(self, task_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...


class TryStarts(Protocol):
    """What a try must know before it runs, asked for the tries starting together at once."""

    async def lookup(self, task_id: TaskId) -> tuple[bool, bytes | None]:
        """Whether the task was cancelled, and the workers' copy of its last checkpoint."""
        ...


@dataclass(frozen=True, slots=True)
class TaskDeps:
    """What the handler needs: the registered tasks, where events go, who is running."""

    tasks: Mapping[str, TaskDefinition]
    publisher: EventPublisher
    cancellations: Cancellations
    worker: str
    default_timeout_s: float = DEFAULT_TIMEOUT_S
    progress_interval_s: float = 1.0
    limits: TaskLimits | None = None  # what ctx.rate_limit and ctx.concurrency ask
    processes: TaskProcesses | None = None  # where executor="process" tasks run
    task_types: TaskTypes | None = None  # what ctx.enqueue checks follow-ups against
    checkpoints: CheckpointStore | None = None  # the fast copy of ctx.checkpoint's state
    starts: TryStarts | None = None  # cancel flags and that copy, read as each try starts


class TaskRetry(TransientError):
    """A try failed and the task has tries left; `details` is the traceback."""

    def __init__(self, message: str, *, details: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.details = details


class TaskDead(PermanentError):
    """Its last try failed, its workers kept dying, or no task of its name runs here: dead-
    lettered, for a re-drive once fixed; `details` is the traceback."""

    def __init__(self, message: str, *, details: str) -> None:
        super().__init__(message)
        self.details = details


class TaskFailedForGood(Exception):
    """A Permanent error, or arguments that no longer fit: reported failed and acknowledged,
    with no dead letter (a re-drive would fail the same); `details` is the traceback."""

    def __init__(self, message: str, *, details: str) -> None:
        super().__init__(message)
        self.details = details


class TaskTimedOut(Exception):
    """A try ran past its timeout."""


async def run_task(command: RunTask, deps: TaskDeps, *, attempt: int) -> None:
    """Run one try of `command`'s task and report it; raises to have the consumer retry it,
    dead-letter it (TaskDead) or drop it (JobCancelled). A task failed for good returns, so
    the consumer acknowledges it."""
    definition = deps.tasks.get(command.task)
    if definition is None:
        raise TaskDead(
            f"no task {command.task!r} in worker {deps.worker}",
            details=f"registered here: {', '.join(sorted(deps.tasks)) or 'none'}",
        )
    cancelled, stored = deps.cancellations.knows_cancelled(command.task_id), None
    if not cancelled and deps.starts is not None:
        cancelled, stored = await deps.starts.lookup(command.task_id)
    # A cancel heard during the lookup may have missed it; none can slip in after this check,
    # since nothing awaits before the watch that aborts the run on a cancel.
    if cancelled or deps.cancellations.knows_cancelled(command.task_id):
        raise JobCancelled(f"task {command.task_id} was cancelled")
    # Tries since the last re-drive are what the policy counts; `attempt` numbers them all.
    tries = attempt - command.redriven_after
    if tries > definition.policy.max_tries + CRASHES_FORGIVEN:
        raise TaskDead(
            f"delivered {tries} times: its workers kept dying before it ended",
            details=f"max_tries {definition.policy.max_tries}, crashes forgiven {CRASHES_FORGIVEN}",
        )
    span = trace.get_current_span()
    span.set_attribute("downlink.task_id", command.task_id)
    span.set_attribute("downlink.task", command.task)
    this_try = _Try(command, deps, attempt, checkpointed=stored is not None)
    context = _context(command, deps, this_try, stored)
    try:
        with _outcome(definition, tries):
            async with deps.cancellations.watch(command.task_id):
                result = _checked_json(await _call(definition, command.args, context, deps))
            await context.flush()
    except TaskFailedForGood as failure:
        span.set_status(trace.StatusCode.ERROR, str(failure))
        await context.flush()
        await this_try.report(
            failure_event(command, failure, attempt, deps.worker, dead_lettered=False)
        )
        return
    except Exception:
        # The try's retry or failure is reported next: its start must be on record first.
        await this_try.announce()
        raise
    finally:
        this_try.stop_timer()
    await _succeeded(command, deps, this_try, result)


class _Try:
    """One try's reports. Its TaskStarted waits until the task outlives the progress interval,
    reports anything or fails: most tasks end sooner, and their TaskSucceeded then carries the
    start instead (one event on the wire, not two; the history stays exact)."""

    def __init__(self, command: RunTask, deps: TaskDeps, attempt: int, *, checkpointed: bool):
        self.start = TaskStarted(
            event_id=new_event_id(),
            task_id=command.task_id,
            at=time.time(),
            attempt=attempt,
            worker=deps.worker,
        )
        # Whether the workers' copy of a checkpoint may exist, to be dropped at the end.
        self.checkpointed = checkpointed
        self._publish = deps.publisher.publish
        self._sent: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(deps.progress_interval_s, self._send)

    def _send(self) -> None:
        if self._sent is None:
            self._sent = asyncio.create_task(self._publish(self.start))

    async def announce(self) -> None:
        """Send the start unless it was sent; returns once it is on the stream."""
        self._timer.cancel()
        self._send()
        assert self._sent is not None
        await asyncio.shield(self._sent)

    async def report(self, event: TaskEvent) -> None:
        """Publish what the task reports, after its try's start."""
        await self.announce()
        if isinstance(event, TaskCheckpointed):
            self.checkpointed = True
        await self._publish(event)

    def stop_timer(self) -> None:
        self._timer.cancel()

    async def started_at(self) -> float | None:
        """The try's start for its outcome to carry; None once its TaskStarted is sent."""
        if self._sent is None:
            return self.start.at
        await asyncio.shield(self._sent)  # the start goes first on the stream
        return None


async def _succeeded(command: RunTask, deps: TaskDeps, this_try: _Try, result: Any) -> None:
    await deps.publisher.publish(
        TaskSucceeded(
            event_id=new_event_id(),
            task_id=command.task_id,
            at=time.time(),
            result=result,
            attempt=this_try.start.attempt,
            worker=deps.worker,
            started_at=await this_try.started_at(),
        )
    )
    if deps.checkpoints is not None and this_try.checkpointed:
        # Done: a redelivery of it (a crash before the ack) changes nothing on its row.
        await deps.checkpoints.forget(command.task_id)


def _context(command: RunTask, deps: TaskDeps, this_try: _Try, stored: bytes | None) -> Context:
    """The try's Context, with the checkpoint to resume from: the workers' copy (the newest),
    else the command's (PostgreSQL's, after a Redis loss)."""
    return Context(
        task_id=command.task_id,
        task=command.task,
        attempt=this_try.start.attempt,
        report=this_try.report,
        is_cancelled=lambda: deps.cancellations.knows_cancelled(command.task_id),
        progress_interval_s=deps.progress_interval_s,
        limits=deps.limits,
        user_id=command.user_id,
        checkpointed=command.checkpoint if stored is None else msgspec.json.decode(stored),
        task_types=deps.task_types,
        checkpoints=deps.checkpoints,
        workflow_id=command.workflow_id,
        step=command.step,
    )


def _checked_json(result: Any) -> Any:
    """`result` (JSON builtins), unless JSON cannot carry it as it is: NaN and infinities
    would be stored as null, so the try fails with the reason instead."""
    if result is None or type(result) in (str, int, bool):
        return result  # nothing to look into (most tasks return these)
    try:
        json.dumps(result, allow_nan=False)
    except ValueError as exc:
        raise TypeError(f"the task's result is not JSON-serialisable: {exc}") from None
    return result


@contextlib.contextmanager
def _outcome(definition: TaskDefinition, tries: int) -> Iterator[None]:
    """Turn what the task raised into the consumer's vocabulary, by the task's own policy;
    `tries` is this try's number since the task was enqueued or last re-driven."""
    try:
        yield
    except (JobCancelled, TaskDead):
        raise
    except (PermanentError, msgspec.ValidationError) as exc:
        raise TaskFailedForGood(_summary(exc), details=_details(exc)) from exc
    except Exception as exc:
        if tries >= definition.policy.max_tries:
            raise TaskDead(_summary(exc), details=_details(exc)) from exc
        delay_s = definition.policy.delay_s(tries)
        raise TaskRetry(_summary(exc), details=_details(exc), retry_after_s=delay_s) from exc


async def _call(
    definition: TaskDefinition, args: dict[str, Any], context: Context, deps: TaskDeps
) -> Any:
    """The task's return value as JSON builtins; its errors as they are."""
    arguments = msgspec.convert(args, definition.arguments)
    kwargs = {name: getattr(arguments, name) for name in arguments.__struct_fields__}
    if definition.context_parameter is not None:
        kwargs[definition.context_parameter] = context
    policy = definition.policy
    hard_s = policy.timeout_s or deps.default_timeout_s
    soft_s = policy.soft_timeout_s or hard_s
    if soft_s >= hard_s and policy.soft_timeout_s is None:
        hard_s = soft_s + HARD_GRACE_S
    if definition.executor == "async":
        run = definition.function(**kwargs)
    elif definition.executor == "thread":
        # A thread cannot be cancelled: past its timeout the try fails, the thread runs on.
        run = asyncio.to_thread(definition.function, **kwargs)
    elif deps.processes is None:
        raise RuntimeError(f"task {definition.name} needs a process pool; this worker has none")
    else:
        # Cancelled at the timeout like any try, which kills its process.
        run = deps.processes.run(hard_s, definition, kwargs)
    result = await _within(run, soft_s=soft_s, hard_s=hard_s)
    if isinstance(result, Canvas):
        return await _expansion(result, deps)
    try:
        return msgspec.to_builtins(result)
    except TypeError as exc:
        raise TypeError(f"the task's result is not JSON-serialisable: {exc}") from None


async def _expansion(block: Canvas, deps: TaskDeps) -> dict[str, Any]:
    """A step that returned a workflow block: the block checked as the gateway checks a
    submitted one (the same messages), so a bad one fails the step here, for good."""
    if deps.task_types is None:
        raise RuntimeError("this worker cannot look up task types to expand a workflow step")
    try:
        steps = await resolve(block.to_spec(), deps.task_types.lookup)
    except (ValueError, WorkflowInvalid) as exc:
        raise PermanentError(f"the workflow this step returned cannot run: {exc}") from None
    return expansion(steps)


async def _within(run: Any, *, soft_s: float, hard_s: float) -> Any:
    """Await `run`: TimeoutError is raised inside it at `soft_s`; at `hard_s` it is cancelled."""

    async def soft() -> Any:
        async with asyncio.timeout(soft_s):
            return await run

    attempt = asyncio.ensure_future(soft())
    try:
        done, _ = await asyncio.wait({attempt}, timeout=hard_s)
    except asyncio.CancelledError:
        attempt.cancel()
        raise
    if not done:
        # The task swallowed its soft timeout or is still cleaning up: cut it short.
        attempt.cancel()
        await asyncio.wait({attempt}, timeout=1.0)
        raise TaskTimedOut(f"hard timeout: still running after {hard_s:g} s")
    try:
        return attempt.result()
    except TimeoutError:
        raise TaskTimedOut(f"timed out after {soft_s:g} s") from None


def failure_event(
    command: RunTask,
    error: BaseException,
    attempts: int,
    worker: str,
    *,
    dead_lettered: bool = True,
) -> TaskFailed:
    """The TaskFailed of a run that ended in error: dead-lettered, or failed for good."""
    return TaskFailed(
        event_id=new_event_id(),
        task_id=command.task_id,
        at=time.time(),
        error=_with_details(error),
        attempts=attempts,
        worker=worker,
        dead_lettered=dead_lettered,
    )


def retrying_event(
    command: RunTask, error: BaseException, attempt: int, delay_s: float, worker: str
) -> TaskRetrying:
    """The TaskRetrying of a try scheduled again."""
    return TaskRetrying(
        event_id=new_event_id(),
        task_id=command.task_id,
        at=time.time(),
        attempt=attempt,
        error=_with_details(error),
        retry_in_s=delay_s,
        worker=worker,
    )


def _summary(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _details(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))[-MAX_ERROR_CHARS:]


def _with_details(error: BaseException) -> str:
    details = getattr(error, "details", None)
    return f"{error}\n\n{details}" if details else _summary(error)
