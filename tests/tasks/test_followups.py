"""Follow-up tasks (`ctx.enqueue`) end to end: a real gateway and `downlink worker` on real
Redis and PostgreSQL; the tracker writes each follow-up from the worker's TaskEnqueued."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import redis
from faststream.redis.parser import BinaryMessageFormatV1

from services.tasks.definitions import TaskPolicy
from services.tasks.registry import RegisteredTask
from shared.events import EVENT_DECODER, TaskEnqueued
from shared.ids import EventId, new_event_id
from shared.streams import DATA_FIELD, EVENTS_STREAM, TRACKER_GROUP, task_types_key
from tests.tasks.conftest import STACK_ENV, enqueue, frames, start_worker, wait_task

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline, PipelineFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


def _spawn(stack: Pipeline, task: str, **args: Any) -> tuple[str, dict[str, Any]]:
    """Run `spawn` (which enqueues `task` with `args`) for alice; its id and end state."""
    alice = stack.client("alice")
    parent = enqueue(alice, "spawn", args={"task": task, "args": args})
    return parent, wait_task(alice, parent)


def test_a_follow_up_runs_for_the_same_user_in_the_parents_trace(stack: Pipeline) -> None:
    start_worker(stack)
    alice = stack.client("alice")
    parent_id = enqueue(alice, "spawn", args={"task": "add", "args": {"a": 2, "b": 3}})
    parent = wait_task(alice, parent_id)
    assert parent["status"] == "completed", parent
    child = wait_task(alice, parent["result"]["child"])
    assert (child["status"], child["result"], child["parent_id"]) == ("completed", 5, parent_id)
    assert child["task"] == "add"
    assert parent["parent_id"] is None
    assert child["trace_id"] == parent["trace_id"]
    bob = stack.client("bob")
    assert bob.get(f"/api/v1/tasks/{child['task_id']}").status_code == 404
    assert alice.get("/api/v1/tasks").json()["total"] == 2


def test_bad_arguments_raise_inside_the_parent_and_queue_nothing(stack: Pipeline) -> None:
    start_worker(stack)
    alice = stack.client("alice")
    _, wrong_type = _spawn(stack, "add", a="two")
    _, unexpected = _spawn(stack, "add", a=1, c=2)
    _, unknown = _spawn(stack, "no_such_task", a=1)
    assert wrong_type["status"] == unexpected["status"] == "failed"
    assert "InvalidArguments: args.a:" in wrong_type["error"]
    assert "args.c: unexpected argument" in unexpected["error"]
    # An unknown name may be a worker still starting: an error like any other (here max_tries 1).
    assert unknown["status"] == "dead"
    assert "UnknownTask: ctx.enqueue: no worker has registered a task named" in unknown["error"]
    assert alice.get("/api/v1/tasks").json()["total"] == 3  # the parents only


def test_a_task_of_another_worker_is_checked_against_the_live_catalogue(
    stack: Pipeline, redis_url: str
) -> None:
    start_worker(stack)
    other = RegisteredTask(
        name="elsewhere",
        queue="other",
        policy=TaskPolicy(queue="other", priority=8),
        args_schema={
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
            "additionalProperties": False,
        },
        worker="other-worker",
    )
    client = redis.Redis.from_url(redis_url)
    client.hset(task_types_key("other-worker"), "elsewhere", msgspec.json.encode(other))
    client.close()
    _, refused = _spawn(stack, "elsewhere", x="one")
    assert refused["status"] == "failed"
    assert "args.x:" in refused["error"]
    parent_id, parent = _spawn(stack, "elsewhere", x=1)
    assert parent["status"] == "completed", parent
    child = stack.client("alice").get(f"/api/v1/tasks/{parent['result']['child']}").json()
    assert (child["queue"], child["priority"], child["status"]) == ("other", 8, "pending")
    assert child["parent_id"] == parent_id


def test_a_replayed_enqueue_event_writes_no_second_task(
    pipeline_factory: PipelineFactory, redis_url: str
) -> None:
    # The reconciler trims acknowledged events; this test reads one back, so it must not run.
    stack = pipeline_factory(**{**STACK_ENV, "DOWNLINK_RECONCILE_INTERVAL": "600"})
    start_worker(stack)
    parent_id, parent = _spawn(stack, "add", a=1)
    child_id = parent["result"]["child"]
    (body, headers), *_ = [
        (body, headers)
        for body, headers in frames(redis_url, EVENTS_STREAM)
        if isinstance(EVENT_DECODER.decode(body), TaskEnqueued)
    ]
    event = EVENT_DECODER.decode(body)
    # The same event again, and the same fact under a new event id (as a second publish).
    again = msgspec.structs.replace(event, event_id=EventId(new_event_id()))
    client = redis.Redis.from_url(redis_url)
    try:
        for replay in (body, msgspec.json.encode(again)):
            last = client.xadd(EVENTS_STREAM, {DATA_FIELD: _frame(replay, headers)})
        _wait_projected(client, last)
    finally:
        client.close()
    alice = stack.client("alice")
    tasks = alice.get("/api/v1/tasks").json()["tasks"]
    assert sorted(t["task_id"] for t in tasks) == sorted([parent_id, child_id])
    assert wait_task(alice, child_id)["result"] == 1


def _frame(body: bytes, headers: dict[str, Any]) -> bytes:
    return asyncio.run(
        BinaryMessageFormatV1.encode(
            message=body, reply_to=None, headers=headers, correlation_id="replay"
        )
    )


def _wait_projected(client: redis.Redis, entry_id: Any, timeout: float = 20) -> None:
    """Until the tracker has read and acknowledged every entry up to `entry_id`."""
    deadline = time.monotonic() + timeout
    wanted = _entry_number(entry_id)
    while True:
        groups: list[dict[str, Any]] = client.xinfo_groups(EVENTS_STREAM)
        (group,) = [g for g in groups if g["name"] == TRACKER_GROUP.encode()]
        if _entry_number(group["last-delivered-id"]) >= wanted and group["pending"] == 0:
            return
        assert time.monotonic() < deadline, f"the tracker did not get to {entry_id!r}: {group}"
        time.sleep(0.1)


def _entry_number(entry_id: str | bytes) -> tuple[int, ...]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return tuple(int(part) for part in text.split("-"))
