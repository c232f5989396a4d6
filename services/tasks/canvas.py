"""Building workflows in Python: steps, `chain`, `group`, `chord`, `after=`, and `@workflow`.

    from downlink import chain, group, chord, download, workflow

    flow = chain(fetch.s(url=u), group(ndvi.s(), rgb.s()), report.s())

Each building block turns into shared.workflows' data (`to_spec()`): every step gets a key (its
own `key=`, else its task's short name, numbered when repeated) and the keys of the steps it
runs after: in a chain, the previous block's last steps; in a group, nothing more than the
group's own predecessors; with `after=[...]`, the steps named too. A step's parents' results
feed it (shared.workflows says how): after a group or with `after=`, always as a list. A task
may return a block: its step then expands into it and ends with it, with its last steps'
results (one chain per capture a search found, say).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from shared.workflows import DOWNLOAD, EXPORT, StepSpec, WorkflowSpec

if TYPE_CHECKING:
    from services.tasks.definitions import TaskDefinition


class _Keys:
    """Keys for one workflow: a step's own, else its task's short name, numbered on repeats."""

    def __init__(self) -> None:
        self.of: dict[int, str] = {}
        self._used: set[str] = set()

    def key_for(self, step: Step) -> str:
        if id(step) in self.of:
            raise ValueError(f"step {self.of[id(step)]!r} is used twice in one workflow")
        base = step.key or step.task.rsplit(".", 1)[-1].replace("/", "_")
        key, n = base, 1
        while key in self._used:
            if step.key is not None:
                raise ValueError(f"two steps have the key {step.key!r}")
            n += 1
            key = f"{base}-{n}"
        self._used.add(key)
        self.of[id(step)] = key
        return key


@dataclass(frozen=True, slots=True)
class _Ends:
    """The last steps of a block; `many` when they are a group's (fed on as a list)."""

    keys: list[str]
    many: bool = False


class Canvas:
    """A block of a workflow; `to_spec()` is the DAG it makes on its own."""

    def emit(self, keys: _Keys, upstream: _Ends, out: list[StepSpec]) -> _Ends:
        """Append this block's steps after `upstream`; return its last steps."""
        raise NotImplementedError

    def to_spec(self, *, allow_partial: bool = False) -> WorkflowSpec:
        steps: list[StepSpec] = []
        self.emit(_Keys(), _Ends([]), steps)
        return WorkflowSpec(steps=steps, allow_partial=allow_partial)


class Step(Canvas):
    """One task (by definition or registered name) with its arguments.

    `input` names the parameter its parents' results go to (default: the first one `args`
    leaves unset); `after` adds steps it waits for besides its place in a chain.
    """

    def __init__(
        self,
        task: str | TaskDefinition,
        args: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        input: str | None = None,
        priority: int | None = None,
        after: Sequence[Step] = (),
    ) -> None:
        self.task = task if isinstance(task, str) else task.name
        self.args = dict(args or {})
        self.key = key
        self.input = input
        self.priority = priority
        self.after = list(after)

    def emit(self, keys: _Keys, upstream: _Ends, out: list[StepSpec]) -> _Ends:
        key = keys.key_for(self)
        extra = []
        for step in self.after:
            if id(step) not in keys.of:
                raise ValueError(f"step {key!r} is after a step that comes later or not at all")
            extra.append(keys.of[id(step)])
        after = list(dict.fromkeys([*upstream.keys, *extra]))
        out.append(
            StepSpec(
                key=key,
                task=self.task,
                args=self.args,
                after=after,
                input=self.input,
                priority=self.priority,
                gather=upstream.many or bool(extra),
            )
        )
        return _Ends([key])


class Chain(Canvas):
    def __init__(self, blocks: Sequence[Canvas]) -> None:
        if not blocks:
            raise ValueError("chain() needs at least one step")
        self.blocks = list(blocks)

    def emit(self, keys: _Keys, upstream: _Ends, out: list[StepSpec]) -> _Ends:
        for block in self.blocks:
            upstream = block.emit(keys, upstream, out)
        return upstream


class Group(Canvas):
    def __init__(self, blocks: Sequence[Canvas]) -> None:
        if not blocks:
            raise ValueError("group() needs at least one step")
        self.blocks = list(blocks)

    def emit(self, keys: _Keys, upstream: _Ends, out: list[StepSpec]) -> _Ends:
        last: list[str] = []
        for block in self.blocks:
            last.extend(block.emit(keys, upstream, out).keys)
        return _Ends(last, many=True)


def chain(*blocks: Canvas) -> Chain:
    """Each block after the one before; a block after a group gets its results as a list."""
    return Chain(blocks)


def group(*blocks: Canvas) -> Group:
    """The blocks side by side."""
    return Group(blocks)


def chord(header: Canvas, body: Canvas) -> Chain:
    """`body` once every step of `header` has succeeded, fed their results as a list."""
    return Chain([header, body])


def step(task: str | TaskDefinition, /, **args: Any) -> Step:
    """A step of a task by registered name (or definition), with keyword arguments."""
    return Step(task, args)


def download(
    files: Sequence[dict[str, Any]] | None = None,
    *,
    key: str | None = None,
    after: Sequence[Step] = (),
    **job: Any,
) -> Step:
    """A download job as a step: `files` and the rest of POST /api/v1/downloads's body (priority,
    metadata, processing ...). Without `files`, its parents' results are the files. Its result
    is the job's id, status and files (url, key, sha256, size, status)."""
    args = dict(job)
    if files is not None:
        args["files"] = list(files)
    return Step(DOWNLOAD, args, key=key, after=after, priority=job.get("priority"))


def export(
    export_format: str = "zip", *, key: str | None = None, after: Sequence[Step] = ()
) -> Step:
    """An export as a step: one archive (zip or tar.gz) of every artifact and downloaded file
    the workflow has by then, with a STAC ItemCollection. Its result is the export's id,
    format, size and SHA-256, once the archive is ready."""
    return Step(EXPORT, {"format": export_format}, key=key, after=after)


def workflow(
    *, name: str | None = None, queue: str = "default", timeout_s: float | None = None
) -> Callable[[Callable[..., Canvas]], TaskDefinition]:
    """Declare a named workflow: a function of JSON arguments that returns a block.

    It is registered as a task that builds the block; POST /api/v1/workflows with its name
    and arguments runs that task as the workflow's first step, which expands into the block.
    """
    from services.tasks.definitions import task

    def register(function: Callable[..., Canvas]) -> TaskDefinition:
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def build_async(**kwargs: Any) -> Canvas:
                return _checked(await function(**kwargs), function)

            builder: Callable[..., Any] = build_async
        else:

            @functools.wraps(function)
            def build(**kwargs: Any) -> Canvas:
                return _checked(function(**kwargs), function)

            builder = build
        definition = task(name=name, queue=queue, max_tries=3, timeout_s=timeout_s)(builder)
        policy = msgspec.structs.replace(definition.policy, builds_workflow=True)
        return dataclasses.replace(definition, policy=policy)

    return register


def _checked(block: Any, function: Callable[..., Any]) -> Canvas:
    if not isinstance(block, Canvas):
        raise TypeError(f"workflow {function.__qualname__} returned {type(block).__name__}")
    return block
