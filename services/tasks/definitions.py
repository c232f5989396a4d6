"""Declaring a user-defined task: `@task(...)`, its policy, its argument type and JSON schema.

A definition is plain data the worker runs and registers: the function, how it is retried and
timed out, and a msgspec Struct built from its signature, which both checks arguments
(`msgspec.convert`) and describes them (`msgspec.json.schema`) for the gateway to check them
at enqueue. A parameter annotated `Context` is injected by the worker, never sent.
"""

from __future__ import annotations

import copy
import functools
import inspect
import random
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from services.tasks.canvas import Step
from services.tasks.context import Context
from shared.errors import PermanentError

Backoff = Literal["exponential", "linear"]
# Where a try runs: on the worker's event loop, in a thread, or in the worker's process pool.
Executor = Literal["async", "thread", "process"]
# Queue names end up in stream keys (downlink:tasks:{queue}:{lane}).
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TASK_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
DEFAULT_TIMEOUT_S = 300.0


class Permanent(PermanentError):
    """Raise it from a task to fail it for good: no retry, status failed, no dead letter."""


class TaskPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a task is queued, retried and timed out.

    Attributes:
        queue: the queue whose workers run it.
        max_tries: tries in all, the first included.
        timeout_s: the hard limit of one try, after which it is cancelled; None takes the
            worker's `--job-timeout` (300 s by default).
        soft_timeout_s: when TimeoutError is raised inside the task so it may clean up; None
            raises it at `timeout_s` and cancels HARD_GRACE_S later.
        retry_backoff_s: the delay before the second try.
        backoff: "exponential" doubles it each try; "linear" adds it (5, 10, 15 ...).
        priority: the default priority (1-10) of an enqueue that gives none.
        unique: at most one open task of this name with the same arguments per user.
        builds_workflow: a `@workflow`: it returns the block its workflow runs, so a schedule
            of it starts a workflow (a plain enqueue runs the builder alone).
    """

    queue: str = "default"
    max_tries: int = 3
    timeout_s: float | None = None
    soft_timeout_s: float | None = None
    retry_backoff_s: float = 5.0
    backoff: Backoff = "exponential"
    priority: int = 5
    unique: bool = False
    builds_workflow: bool = False

    def delay_s(self, attempt: int) -> float:
        """Delay before try `attempt + 1`, with a little jitter so retries do not march."""
        if self.backoff == "linear":
            base = self.retry_backoff_s * attempt
        else:
            base = self.retry_backoff_s * 2 ** (attempt - 1)
        return float(base * random.uniform(0.95, 1.05))


@dataclass(frozen=True, slots=True)
class TaskDefinition:
    """One registered task.

    Attributes:
        name: what enqueues name it by.
        function: the decorated function (async, or sync: run in a thread or a process).
        policy: its queueing, retry and timeout policy.
        arguments: a Struct of its parameters (the Context one left out), for msgspec.convert.
        context_parameter: the name of the parameter that receives the Context, if any.
        executor: "async" (an async function), "thread" or "process" (a sync one).
    """

    name: str
    function: Callable[..., Any]
    policy: TaskPolicy
    arguments: type[msgspec.Struct]
    context_parameter: str | None
    executor: Executor = "async"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.function)

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments (what GET /api/v1/task-types shows)."""
        return msgspec.json.schema(self.arguments)

    def s(self, **args: Any) -> Step:
        """A workflow step of this task with these arguments (Celery's signature)."""
        return Step(self, args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The decorated function stays callable as before, for tests and direct use.
        return self.function(*args, **kwargs)


def task(
    *,
    name: str | None = None,
    queue: str = "default",
    max_tries: int = 3,
    timeout_s: float | None = None,
    soft_timeout_s: float | None = None,
    retry_backoff_s: float = 5.0,
    backoff: Backoff = "exponential",
    priority: int = 5,
    unique: bool = False,
    executor: Executor | None = None,
) -> Callable[[Callable[..., Any]], TaskDefinition]:
    """Declare a function as a task; its name defaults to `module.function`.

    A sync function runs in a thread, or with `executor="process"` (CPU-bound work) in the
    worker's process pool, up to `--max-jobs` processes but no more than the machine's cores.
    A process task is a module-level function without a Context parameter, whose arguments and
    result cross the process boundary as JSON. Neither a thread nor a process can be
    cancelled: past its timeout the try fails; the thread runs on, the process is killed (a
    fresh one takes its place), so a process task has no soft timeout.
    """
    policy = TaskPolicy(
        queue=queue,
        max_tries=max_tries,
        timeout_s=timeout_s,
        soft_timeout_s=soft_timeout_s,
        retry_backoff_s=retry_backoff_s,
        backoff=backoff,
        priority=priority,
        unique=unique,
    )
    _check(policy)

    def register(function: Callable[..., Any]) -> TaskDefinition:
        task_name = name or f"{function.__module__}.{function.__qualname__}"
        if not TASK_NAME.fullmatch(task_name):
            raise ValueError(f"task name {task_name!r}: use letters, digits and _ . : -")
        arguments, context_parameter = _arguments_of(function, task_name)
        runs_in = _executor_of(function, executor, task_name, policy, context_parameter)
        return TaskDefinition(task_name, function, policy, arguments, context_parameter, runs_in)

    return register


def _check(policy: TaskPolicy) -> None:
    if not QUEUE_NAME.fullmatch(policy.queue):
        raise ValueError(f"queue {policy.queue!r}: 1-64 letters, digits and _ . -")
    if policy.max_tries < 1:
        raise ValueError("max_tries must be >= 1")
    if not 1 <= policy.priority <= 10:
        raise ValueError("priority must be 1-10")
    for field in ("timeout_s", "soft_timeout_s"):
        value = getattr(policy, field)
        if value is not None and value <= 0:
            raise ValueError(f"{field} must be > 0")
    if policy.retry_backoff_s < 0:
        raise ValueError("retry_backoff_s must be >= 0")


def _executor_of(
    function: Callable[..., Any],
    executor: Executor | None,
    task_name: str,
    policy: TaskPolicy,
    context_parameter: str | None,
) -> Executor:
    """Where the function runs, refusing what cannot run there."""
    is_async = inspect.iscoroutinefunction(function)
    if executor is None:
        return "async" if is_async else "thread"
    if is_async != (executor == "async"):
        kind = "an async function" if is_async else "a sync function"
        raise TypeError(f"task {task_name}: {kind} cannot have executor={executor!r}")
    if executor != "process":
        return executor
    if context_parameter is not None:
        raise TypeError(
            f"task {task_name}: a process task has no Context (parameter {context_parameter!r});"
            " it runs in another process, away from the worker's Redis and events"
        )
    if "<locals>" in function.__qualname__:
        raise TypeError(f"task {task_name}: a process task must be defined at module level")
    if policy.soft_timeout_s is not None:
        raise TypeError(f"task {task_name}: a process task has no soft timeout, only timeout_s")
    return executor


def _default_of(default: Any) -> Any:
    """A parameter's default as a Struct field takes it: a mutable one (a list, a dict) copied
    for each call, as msgspec refuses to share one."""
    if isinstance(default, list | dict | set | bytearray) and default:
        return msgspec.field(default_factory=functools.partial(copy.deepcopy, default))
    return default


def _arguments_of(
    function: Callable[..., Any], task_name: str
) -> tuple[type[msgspec.Struct], str | None]:
    """A Struct of the function's parameters, and the name of its Context parameter."""
    hints = typing.get_type_hints(function, include_extras=True)
    fields: list[tuple[str, Any, Any] | tuple[str, Any]] = []
    context_parameter: str | None = None
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"task {task_name}: *args and **kwargs cannot be checked; name them")
        annotation = hints.get(parameter.name, Any)
        if annotation is Context:
            context_parameter = parameter.name
        elif parameter.default is parameter.empty:
            fields.append((parameter.name, annotation))
        else:
            fields.append((parameter.name, annotation, _default_of(parameter.default)))
    struct_name = re.sub(r"\W", "_", task_name) + "_args"
    arguments = msgspec.defstruct(
        struct_name, fields, kw_only=True, forbid_unknown_fields=True, frozen=True
    )
    return arguments, context_parameter
