"""Workflow definitions as data: the DAG a workflow is, checked the same way wherever one is made.

A workflow is a list of steps, each a registered task (or a built-in download job) with its
arguments and the steps it runs after. A step's parents' results feed it: one parent's result
as it is, several parents' (or a fan-in's: `gather`) as a list in `after`'s order, passed as
the argument `input` names (by default the first of the task's parameters the step's
arguments leave unset; none when every parameter is set, as Celery's immutable signatures).
The gateway checks a submitted DAG with `check_shape` and `resolve`; a worker whose task
returns a workflow (a step that expands into more steps, e.g. one chain per capture found)
resolves it the same way before sending it, so a bad expansion fails its step with the same
message a bad submission answers 422 with.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import msgspec

from shared.errors import DownlinkError
from shared.task_types import InvalidArguments, TaskType, UnknownTaskType, check_arguments

# A workflow step's result that is itself a workflow: expand it in place of the step.
EXPANSION_KEY = "$downlink.workflow"
MAX_STEPS = 10_000
STEP_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
# The built-in step that submits a download job; its arguments are a job's body.
DOWNLOAD = "downlink.download"
# The built-in step that exports what the workflow made so far: {"format": "zip" | "tar.gz"}.
EXPORT = "downlink.export"
EXPORT_FORMATS = ("zip", "tar.gz")

StepKind = Literal["task", "download", "export"]


class StepSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One step as submitted: `task` is a registered task's name, or DOWNLOAD."""

    key: str
    task: str
    args: dict[str, Any] = {}
    after: list[str] = []
    input: str | None = None
    priority: int | None = None
    gather: bool = False  # the parents' results as a list even when there is one parent


class WorkflowSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: list[StepSpec]
    allow_partial: bool = False


class ResolvedStep(msgspec.Struct, frozen=True, kw_only=True):
    """A step checked against its task type: its queue and priority, and where input goes."""

    key: str
    kind: StepKind
    task: str
    args: dict[str, Any]
    after: list[str]
    input: str | None
    queue: str
    priority: int
    gather: bool = False


class WorkflowInvalid(DownlinkError):
    """A workflow that cannot run as given; the message starts with the field at fault."""


class UnknownStepTask(WorkflowInvalid):
    """A step names a task no live worker registered (`steps[2].task: ...`)."""


# name -> its registered type; raises UnknownTaskType when no live worker registered it.
Lookup = Callable[[str], Awaitable[TaskType]]


def check_shape(spec: WorkflowSpec) -> None:
    """Raise WorkflowInvalid for an empty or oversized DAG, a bad or repeated key, a
    dependency on no step, or a cycle (naming it)."""
    if not spec.steps:
        raise WorkflowInvalid("steps: a workflow needs at least one step")
    if len(spec.steps) > MAX_STEPS:
        raise WorkflowInvalid(f"steps: {len(spec.steps)} steps; at most {MAX_STEPS}")
    seen: set[str] = set()
    for i, step in enumerate(spec.steps):
        if not STEP_KEY.fullmatch(step.key):
            raise WorkflowInvalid(f"steps[{i}].key: {step.key!r}: 1-100 letters, digits, _ . : -")
        if step.key in seen:
            raise WorkflowInvalid(f"steps[{i}].key: {step.key!r} names two steps")
        seen.add(step.key)
    for i, step in enumerate(spec.steps):
        for parent in step.after:
            if parent not in seen:
                raise WorkflowInvalid(f"steps[{i}].after: no step is named {parent!r}")
        if len(set(step.after)) != len(step.after):
            raise WorkflowInvalid(f"steps[{i}].after: a step is named twice")
    cycle = _a_cycle({step.key: step.after for step in spec.steps})
    if cycle:
        raise WorkflowInvalid(f"steps: a cycle: {' -> '.join(cycle)}")


def _a_cycle(parents_of: dict[str, list[str]]) -> list[str]:
    """One cycle of the graph as a path (first key repeated at its end), or []."""
    done: set[str] = set()
    for start in parents_of:
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            key, index = stack.pop()
            if index == 0:
                path.append(key)
                on_path.add(key)
            parents = parents_of[key]
            if index < len(parents):
                stack.append((key, index + 1))
                parent = parents[index]
                if parent in on_path:
                    return [*path[path.index(parent) :], parent][::-1]
                if parent not in done:
                    stack.append((parent, 0))
            else:
                done.add(key)
                on_path.discard(key)
                path.pop()
    return []


async def resolve(spec: WorkflowSpec, lookup: Lookup) -> list[ResolvedStep]:
    """The steps checked against the registered task types, in the order given.

    Raises WorkflowInvalid: UnknownStepTask for a task no live worker registered.
    """
    check_shape(spec)
    types: dict[str, TaskType] = {}
    resolved: list[ResolvedStep] = []
    for i, step in enumerate(spec.steps):
        if step.priority is not None and not 1 <= step.priority <= 10:
            raise WorkflowInvalid(f"steps[{i}].priority: 1 (lowest) to 10 (highest)")
        if step.task == DOWNLOAD:
            resolved.append(_download_step(i, step))
            continue
        if step.task == EXPORT:
            resolved.append(_export_step(i, step))
            continue
        if step.task not in types:
            try:
                types[step.task] = await lookup(step.task)
            except UnknownTaskType as exc:
                raise UnknownStepTask(f"steps[{i}].task: {exc}") from None
        found = types[step.task]
        where = f"steps[{i}]"
        input_name = _input_of(found, step, where) if step.after else None
        _check_step_arguments(found, step.args, input_name, where)
        resolved.append(
            ResolvedStep(
                key=step.key,
                kind="task",
                task=step.task,
                args=step.args,
                after=step.after,
                input=input_name,
                queue=found.queue,
                priority=step.priority or int(found.policy.get("priority", 5)),
                gather=step.gather,
            )
        )
    return resolved


def named_step_key(name: str) -> str:
    """The key of a named workflow's one submitted step: its short name (`full_pipeline`)."""
    return name.rsplit(".", 1)[-1][:100]


def _download_step(i: int, step: StepSpec) -> ResolvedStep:
    # The job body is checked when the job is submitted (a bad one fails the step); here only
    # that fed input has a place to go.
    input_name = (step.input or "files") if step.after else None
    if input_name not in (None, "files"):
        raise WorkflowInvalid(f"steps[{i}].input: a download step takes its input as 'files'")
    return ResolvedStep(
        key=step.key,
        kind="download",
        task=DOWNLOAD,
        args=step.args,
        after=step.after,
        input=input_name,
        queue="downloads",
        priority=step.priority or int(step.args.get("priority", 5)),
        gather=step.gather,
    )


def _export_step(i: int, step: StepSpec) -> ResolvedStep:
    # Its parents' results are not fed: it packs whatever the workflow has made by then.
    unexpected = sorted(set(step.args) - {"format"})
    if unexpected:
        raise WorkflowInvalid(f"steps[{i}].args.{unexpected[0]}: unexpected argument")
    if step.args.get("format", "zip") not in EXPORT_FORMATS:
        raise WorkflowInvalid(f"steps[{i}].args.format: one of {', '.join(EXPORT_FORMATS)}")
    return ResolvedStep(
        key=step.key,
        kind="export",
        task=EXPORT,
        args={"format": step.args.get("format", "zip")},
        after=step.after,
        input=None,
        queue="exports",
        priority=step.priority or 5,
        gather=step.gather,
    )


def _input_of(found: TaskType, step: StepSpec, where: str) -> str | None:
    """Where the parents' results go: `input`, else the first parameter left unset."""
    properties: dict[str, Any] = _object_schema(found.args_schema).get("properties", {})
    if step.input is not None:
        if step.input not in properties:
            raise WorkflowInvalid(
                f"{where}.input: {found.name} has no parameter named {step.input!r}"
            )
        if step.input in step.args:
            raise WorkflowInvalid(f"{where}.input: {step.input!r} is also given in args")
        return step.input
    return next((name for name in properties if name not in step.args), None)


def _check_step_arguments(
    found: TaskType, args: dict[str, Any], input_name: str | None, where: str
) -> None:
    """The gateway's argument check, with the fed parameter counted as given."""
    schema = found.args_schema
    if input_name is not None:
        schema = _without_required(schema, input_name)
    try:
        check_arguments(msgspec.structs.replace(found, args_schema=schema), args)
    except InvalidArguments as exc:
        raise WorkflowInvalid(f"{where}.{exc}") from None


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The object a schema describes, through msgspec's `$ref` into `$defs`."""
    if "$ref" in schema:
        found: dict[str, Any] = schema.get("$defs", {}).get(schema["$ref"].rsplit("/", 1)[-1], {})
        return found
    return schema


def _without_required(schema: dict[str, Any], name: str) -> dict[str, Any]:
    # msgspec's schemas put the Struct under $defs and point at it with $ref.
    if "$ref" in schema:
        ref = schema["$ref"].rsplit("/", 1)[-1]
        defs = dict(schema.get("$defs", {}))
        defs[ref] = _without_required(defs[ref], name)
        return {**schema, "$defs": defs}
    required = [field for field in schema.get("required", []) if field != name]
    return {**schema, "required": required}


def expansion(steps: Sequence[ResolvedStep]) -> dict[str, Any]:
    """A task's result that asks for `steps` (resolved) to run in place of its step."""
    return {EXPANSION_KEY: msgspec.to_builtins(list(steps))}


def expanded_steps(result: Any) -> list[ResolvedStep] | None:
    """The steps a step's result asks to expand into, or None for a plain result.

    Raises WorkflowInvalid when the result has the shape of an expansion but not its steps."""
    if not (isinstance(result, dict) and len(result) == 1 and EXPANSION_KEY in result):
        return None
    try:
        return msgspec.convert(result[EXPANSION_KEY], list[ResolvedStep])
    except msgspec.ValidationError as exc:
        raise WorkflowInvalid(f"the expansion: {exc}") from None
