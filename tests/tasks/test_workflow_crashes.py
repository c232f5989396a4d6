"""A workflow's fan-in under SIGKILL: workers die at random while a 20-wide fan-in runs, the
gateway (and its tracker) dies once in the middle, and the body still runs exactly once; and
a Redis flush in the middle of a workflow."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import pytest
import redis

from tests.tasks.conftest import STACK_ENV, start_worker
from tests.tasks.test_workflows import WORKFLOW_TASKS, steps_of, submit, wait_workflow

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.services import ServiceProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


def test_a_fan_in_starts_once_while_workers_and_the_gateway_are_killed(
    stack: Pipeline, tmp_path: Path
) -> None:
    workers: list[ServiceProcess] = [
        start_worker(stack, *WORKFLOW_TASKS, "--max-jobs", "8") for _ in range(2)
    ]
    alice = stack.client("alice")
    runs = tmp_path / "runs.log"
    branches = [
        {"key": f"b{i}", "task": "wf.nap", "args": {"value": i, "seconds": 0.3, "jitter": 1.2}}
        for i in range(20)
    ]
    body = {
        "key": "sum",
        "task": "wf.total",
        "args": {"runs": str(runs)},
        "after": [branch["key"] for branch in branches],
    }
    workflow_id = submit(alice, steps=[*branches, body])
    chaos = random.Random(20)
    for round_ in range(4):
        time.sleep(chaos.uniform(0.3, 0.9))
        victim = workers.pop(chaos.randrange(len(workers)))
        victim.kill()
        if round_ == 1:
            assert stack.gateway is not None
            stack.gateway.kill()
            stack.start_gateway()
        workers.append(start_worker(stack, *WORKFLOW_TASKS, "--max-jobs", "8"))
    done = wait_workflow(alice, workflow_id, timeout=120)
    assert done["status"] == "completed", done
    assert done["result"] == {"sum": sum(range(20))}
    assert len(runs.read_text().split()) == 1
    assert alice.get("/api/v1/tasks", params={"task": "wf.total"}).json()["total"] == 1
    steps = steps_of(done)
    assert all(steps[f"b{i}"]["result"] == i for i in range(20))
    # Some branch was hit: it took more than one try, and still counted once.
    assert max(steps[f"b{i}"]["attempts"] for i in range(20)) >= 2


def test_a_redis_flush_loses_no_step(stack: Pipeline, redis_url: str) -> None:
    """Redis is the transport: after a flush the queued step is published again from its row,
    and the fan-in after both still runs once."""
    start_worker(stack, *WORKFLOW_TASKS, "--max-jobs", "1")
    alice = stack.client("alice")
    workflow_id = submit(
        alice,
        steps=[
            {"key": "a", "task": "wf.nap", "args": {"value": 1, "seconds": 1.5}},
            {"key": "b", "task": "wf.nap", "args": {"value": 2, "seconds": 1.5}},
            {"key": "sum", "task": "wf.total", "after": ["a", "b"]},
        ],
    )
    deadline = time.monotonic() + 20
    while not any(
        s["status"] == "running"
        for s in steps_of(alice.get(f"/api/v1/workflows/{workflow_id}").json()).values()
    ):
        assert time.monotonic() < deadline, "no step started"
        time.sleep(0.05)
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()
    done = wait_workflow(alice, workflow_id, timeout=60)
    assert done["status"] == "completed", done
    assert done["result"] == {"sum": 3}
    assert alice.get("/api/v1/tasks", params={"task": "wf.total"}).json()["total"] == 1
