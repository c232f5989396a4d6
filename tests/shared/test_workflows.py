"""Workflow definitions as data: the canvas's DAG and the checks every submission goes through."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from downlink import Step, chain, chord, download, export, group, task
from shared.task_types import TaskType, UnknownTaskType
from shared.workflows import (
    StepSpec,
    UnknownStepTask,
    WorkflowInvalid,
    WorkflowSpec,
    check_shape,
    resolve,
)


@task(name="canvas.add")
async def add(a: int, b: int = 0) -> int:
    return a + b


@task(name="canvas.total")
async def total(values: list[int], scale: int = 1) -> int:
    return sum(values) * scale


def steps_of(block: Any) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in msgspec.to_builtins(block.to_spec())["steps"]}


def test_a_chain_of_groups_names_each_step_and_feeds_a_group_as_a_list() -> None:
    flow = chain(add.s(a=1), group(add.s(), add.s()), total.s(scale=2))
    steps = steps_of(flow)
    assert list(steps) == ["add", "add-2", "add-3", "total"]
    assert steps["add-2"]["after"] == steps["add-3"]["after"] == ["add"]
    assert (steps["add-2"]["gather"], steps["total"]["gather"]) == (False, True)
    assert steps["total"]["after"] == ["add-2", "add-3"]


def test_a_chord_is_its_header_then_its_body() -> None:
    assert steps_of(chord(group(add.s(a=1), add.s(a=2)), total.s())) == steps_of(
        chain(group(add.s(a=1), add.s(a=2)), total.s())
    )


def test_after_adds_dependencies_and_gathers_even_one_parent() -> None:
    first = Step(add, {"a": 1}, key="first")
    report = Step(total, key="report", after=[first])
    steps = steps_of(group(first, download(urls=["http://127.0.0.1/x"]), report, export()))
    assert steps["report"] == {**steps["report"], "after": ["first"], "gather": True}
    assert steps["download"]["task"] == "downlink.download"
    assert steps["export"]["args"] == {"format": "zip"}


def test_a_step_after_one_that_comes_later_or_twice_is_refused() -> None:
    later = Step(add, {"a": 1})
    with pytest.raises(ValueError, match="comes later"):
        group(Step(total, after=[later]), later).to_spec()
    once = add.s(a=1)
    with pytest.raises(ValueError, match="used twice"):
        chain(once, once).to_spec()


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ({"a": ["c"], "b": ["a"], "c": ["b"]}, "steps: a cycle: "),
        ({"a": ["a"], "b": [], "c": []}, "steps: a cycle: a -> a"),
        ({"a": [], "b": ["z"], "c": []}, "steps[1].after: no step is named 'z'"),
        ({"a": [], "b": ["a", "a"], "c": []}, "steps[1].after: a step is named twice"),
    ],
)
def test_a_bad_shape_is_named(after: dict[str, list[str]], message: str) -> None:
    spec = WorkflowSpec(
        steps=[StepSpec(key=k, task="canvas.add", after=v) for k, v in after.items()]
    )
    with pytest.raises(WorkflowInvalid) as raised:
        check_shape(spec)
    assert str(raised.value).startswith(message)


def test_a_long_chain_is_no_cycle_and_its_reverse_edge_is() -> None:
    keys = [f"s{i}" for i in range(3000)]
    steps = [
        StepSpec(key=k, task="t", after=[keys[i - 1]] if i else []) for i, k in enumerate(keys)
    ]
    check_shape(WorkflowSpec(steps=steps))  # deep, but walked without recursion
    steps[0] = StepSpec(key="s0", task="t", after=["s2999"])
    with pytest.raises(WorkflowInvalid, match="a cycle"):
        check_shape(WorkflowSpec(steps=steps))


async def test_resolve_finds_where_input_goes_and_checks_the_rest() -> None:
    types = {
        d.name: TaskType(
            name=d.name,
            queue="q",
            policy=msgspec.to_builtins(d.policy),
            args_schema=d.schema(),
        )
        for d in (add, total)
    }

    async def lookup(name: str) -> TaskType:
        if name not in types:
            raise UnknownTaskType(name)
        return types[name]

    resolved = await resolve(chain(add.s(a=1), total.s(scale=3)).to_spec(), lookup)
    assert [(s.key, s.input, s.queue) for s in resolved] == [
        ("add", None, "q"),
        ("total", "values", "q"),
    ]
    with pytest.raises(WorkflowInvalid, match=r"steps\[1\]\.args\.scale"):
        await resolve(chain(add.s(a=1), total.s(scale="x")).to_spec(), lookup)
    with pytest.raises(UnknownStepTask, match=r"steps\[0\]\.task: no worker"):
        await resolve(WorkflowSpec(steps=[StepSpec(key="a", task="nope")]), lookup)
