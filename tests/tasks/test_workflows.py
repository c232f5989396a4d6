"""Workflows end to end: a real gateway, tracker and `downlink worker` on real Redis and
PostgreSQL. Steps' results feed the steps after them, a fan-in starts once, a failure skips
what depends on it (or not, with allow_partial), and a cancel reaches every step."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.tasks.conftest import STACK_ENV, start_worker

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from tests.integration.conftest import Pipeline, PipelineFactory

pytestmark = pytest.mark.integration

WORKFLOW_TASKS = ("--tasks", "tests.tasks.workflow_tasks")
ENDED = {"completed", "partial", "failed", "cancelled"}


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


def submit(client: httpx.Client, **body: Any) -> str:
    response = client.post("/api/v1/workflows", json=body)
    assert response.status_code == 202, response.text
    workflow_id: str = response.json()["workflow_id"]
    return workflow_id


def wait_workflow(client: httpx.Client, workflow_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = client.get(f"/api/v1/workflows/{workflow_id}").json()
        if found["status"] in ENDED:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"workflow {workflow_id} did not end within {timeout} s: {found}")
        time.sleep(0.1)


def steps_of(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["key"]: step for step in workflow["steps"]}


def test_a_chain_feeds_each_result_to_the_next_step(stack: Pipeline) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    alice = stack.client("alice")
    workflow_id = submit(
        alice,
        steps=[
            {"key": "sum", "task": "wf.add", "args": {"a": 2, "b": 3}},
            {"key": "twice", "task": "wf.double", "after": ["sum"]},
            {"key": "again", "task": "wf.double", "after": ["twice"]},
        ],
    )
    done = wait_workflow(alice, workflow_id)
    assert done["status"] == "completed", done
    steps = steps_of(done)
    assert [steps[k]["result"] for k in ("sum", "twice", "again")] == [5, 10, 20]
    assert done["result"] == {"again": 20}
    assert all(step["status"] == "completed" and step["attempts"] == 1 for step in steps.values())
    # Each step's task is an ordinary task of alice's, in the workflow's one trace.
    task = alice.get(f"/api/v1/tasks/{steps['twice']['task_id']}").json()
    assert (task["args"], task["result"]) == ({"value": 5}, 10)
    assert task["trace_id"] == done["trace_id"]
    assert stack.client("bob").get(f"/api/v1/workflows/{workflow_id}").status_code == 404


def test_a_named_workflow_expands_into_its_steps(stack: Pipeline) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    alice = stack.client("alice")
    workflow_id = submit(alice, workflow="wf.numbers", args={"a": 2, "b": 5})
    done = wait_workflow(alice, workflow_id)
    assert done["status"] == "completed", done
    # total([double(add(2, 5)), double(2)]) = 14 + 4
    assert done["result"] == {"numbers": 18}
    steps = steps_of(done)
    assert steps["numbers"]["status"] == "completed"
    assert {key for key in steps if key.startswith("numbers/")} == {
        "numbers/add",
        "numbers/double",
        "numbers/double-2",
        "numbers/total",
    }
    assert steps["numbers/total"]["after"] == ["numbers/double", "numbers/double-2"]


def test_a_fan_in_runs_once_after_every_branch(stack: Pipeline, tmp_path: Path) -> None:
    start_worker(stack, *WORKFLOW_TASKS, "--max-jobs", "20")
    alice = stack.client("alice")
    runs = tmp_path / "runs.log"
    branches = [
        {"key": f"b{i}", "task": "wf.nap", "args": {"value": i, "seconds": 0.05, "jitter": 0.2}}
        for i in range(20)
    ]
    body = {
        "key": "sum",
        "task": "wf.total",
        "args": {"runs": str(runs)},
        "after": [f"b{i}" for i in range(20)],
    }
    workflow_id = submit(alice, steps=[*branches, body])
    done = wait_workflow(alice, workflow_id)
    assert done["status"] == "completed", done
    assert done["result"] == {"sum": sum(range(20))}
    assert len(runs.read_text().split()) == 1
    totals = alice.get("/api/v1/tasks", params={"task": "wf.total"}).json()
    assert totals["total"] == 1


def test_a_failed_step_skips_what_depends_on_it_and_fails_the_workflow(stack: Pipeline) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    alice = stack.client("alice")
    workflow_id = submit(
        alice,
        steps=[
            {"key": "ok", "task": "wf.add", "args": {"a": 1}},
            {"key": "bad", "task": "wf.broken", "args": {"value": 7}},
            {"key": "join", "task": "wf.total", "after": ["ok", "bad"]},
            {"key": "after_join", "task": "wf.double", "after": ["join"]},
        ],
    )
    done = wait_workflow(alice, workflow_id)
    steps = steps_of(done)
    assert done["status"] == "failed", done
    assert (steps["ok"]["status"], steps["bad"]["status"]) == ("completed", "failed")
    assert "broken on 7" in steps["bad"]["error"]
    assert steps["join"]["status"] == steps["after_join"]["status"] == "skipped"
    assert steps["join"]["task_id"] is None
    assert "step bad failed" in done["error"]


def test_allow_partial_runs_dependents_with_the_results_there_are(stack: Pipeline) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    alice = stack.client("alice")
    workflow_id = submit(
        alice,
        allow_partial=True,
        steps=[
            {"key": "one", "task": "wf.add", "args": {"a": 1}},
            {"key": "two", "task": "wf.add", "args": {"a": 2}},
            {"key": "bad", "task": "wf.broken"},
            {"key": "join", "task": "wf.total", "after": ["one", "bad", "two"]},
        ],
    )
    done = wait_workflow(alice, workflow_id)
    assert done["status"] == "partial", done
    assert steps_of(done)["join"]["result"] == 3
    assert done["result"] == {"join": 3}


def test_a_step_that_returns_a_workflow_ends_with_it(stack: Pipeline, tmp_path: Path) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    alice = stack.client("alice")
    runs = tmp_path / "runs.log"
    workflow_id = submit(
        alice,
        steps=[
            {"key": "spread", "task": "wf.fan_out", "args": {"n": 5, "runs": str(runs)}},
            {"key": "twice", "task": "wf.double", "after": ["spread"]},
        ],
    )
    done = wait_workflow(alice, workflow_id)
    assert done["status"] == "completed", done
    steps = steps_of(done)
    assert steps["spread"]["result"] == 10  # total(0..4), the expansion's last step
    assert steps["twice"]["result"] == 20
    assert len([k for k in steps if k.startswith("spread/")]) == 6
    assert len(runs.read_text().split()) == 1


def test_cancel_reaches_running_and_waiting_steps(stack: Pipeline) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    alice = stack.client("alice")
    workflow_id = submit(
        alice,
        steps=[
            {"key": "long", "task": "wf.nap", "args": {"value": 1, "seconds": 30}},
            {"key": "next", "task": "wf.double", "after": ["long"]},
        ],
    )
    deadline = time.monotonic() + 20
    while steps_of(alice.get(f"/api/v1/workflows/{workflow_id}").json())["long"]["status"] != (
        "running"
    ):
        assert time.monotonic() < deadline, "the first step never started"
        time.sleep(0.05)
    response = alice.post(f"/api/v1/workflows/{workflow_id}/cancel")
    assert response.status_code == 200, response.text
    cancelled_at = time.monotonic()
    done = alice.get(f"/api/v1/workflows/{workflow_id}").json()
    steps = steps_of(done)
    assert done["status"] == "cancelled"
    assert steps["long"]["status"] == steps["next"]["status"] == "cancelled"
    # The running try is aborted within a second: its history shows it cancelled.
    task_id = steps["long"]["task_id"]
    while True:
        runs = alice.get(f"/api/v1/tasks/{task_id}").json()
        if runs["status"] == "cancelled":
            break
        assert time.monotonic() - cancelled_at < 1.0
        time.sleep(0.05)
    assert alice.post(f"/api/v1/workflows/{workflow_id}/cancel").status_code == 409


@pytest.mark.parametrize(
    ("steps", "status", "detail"),
    [
        (
            [
                {"key": "a", "task": "wf.double", "after": ["b"]},
                {"key": "b", "task": "wf.double", "after": ["a"]},
            ],
            422,
            "steps: a cycle: a -> b -> a",
        ),
        (
            [{"key": "a", "task": "wf.double", "after": ["ghost"]}],
            422,
            "steps[0].after: no step is named 'ghost'",
        ),
        ([{"key": "a", "task": "wf.nothing"}], 404, "steps[0].task: no worker has registered"),
        ([{"key": "a", "task": "wf.add", "args": {"a": "x"}}], 422, "steps[0].args.a"),
        (
            [{"key": "a", "task": "wf.add", "args": {"a": 1}}, {"key": "a", "task": "wf.add"}],
            422,
            "steps[1].key: 'a' names two steps",
        ),
        (
            [{"key": "pack", "task": "downlink.export", "args": {"format": "rar"}}],
            422,
            "steps[0].args.format: one of zip, tar.gz",
        ),
        (
            [{"key": "get", "task": "downlink.download", "args": {"urls": ["ftp://127.0.0.1/a"]}}],
            422,
            "steps[0].args: urls[0]: unsupported scheme 'ftp'",
        ),
    ],
)
def test_a_bad_dag_is_refused_naming_the_field_and_nothing_is_stored(
    stack: Pipeline, steps: list[dict[str, Any]], status: int, detail: str
) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    alice = stack.client("alice")
    response = alice.post("/api/v1/workflows", json={"steps": steps})
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert alice.get("/api/v1/workflows").json()["total"] == 0
    assert alice.get("/api/v1/tasks").json()["total"] == 0


def test_an_unknown_named_workflow_is_404(stack: Pipeline) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    response = stack.client("alice").post("/api/v1/workflows", json={"workflow": "wf.nope"})
    assert response.status_code == 404
    assert response.json()["detail"].startswith("workflow: no worker has registered")


def test_a_purged_step_ends_its_workflow_and_the_running_one_goes_on(stack: Pipeline) -> None:
    start_worker(stack, *WORKFLOW_TASKS, "--max-jobs", "1")
    alice = stack.client("alice")
    workflow_id = submit(
        alice,
        steps=[
            {"key": "a", "task": "wf.nap", "args": {"value": 1, "seconds": 2}},
            {"key": "b", "task": "wf.nap", "args": {"value": 2, "seconds": 2}},
            {"key": "after-a", "task": "wf.double", "after": ["a"]},
            {"key": "after-b", "task": "wf.double", "after": ["b"]},
        ],
    )
    deadline = time.monotonic() + 20
    while not (
        running := [
            key
            for key, step in steps_of(alice.get(f"/api/v1/workflows/{workflow_id}").json()).items()
            if step["status"] == "running"
        ]
    ):
        assert time.monotonic() < deadline, "no step started"
        time.sleep(0.05)
    # One slot: the other step waits in the queue, pending, and is all a purge takes.
    started = running[0]
    queued = "b" if started == "a" else "a"
    purged = stack.client("root", admin=True).post("/api/v1/queues/default/purge")
    assert (purged.status_code, purged.json()["purged"]) == (200, 1), purged.text
    done = wait_workflow(alice, workflow_id)
    steps = steps_of(done)
    assert (steps[started]["status"], steps[f"after-{started}"]["status"]) == (
        "completed",
        "completed",
    )
    assert (steps[queued]["status"], steps[f"after-{queued}"]["status"]) == (
        "cancelled",
        "skipped",
    )
    assert done["status"] == "failed"


def test_a_schedule_of_a_named_workflow_starts_workflows(stack: Pipeline) -> None:
    start_worker(stack, *WORKFLOW_TASKS)
    alice = stack.client("alice")
    created = alice.post(
        "/api/v1/schedules", json={"every_s": 1, "task": "wf.numbers", "args": {"a": 1, "b": 2}}
    )
    assert created.status_code == 201, created.text
    assert created.json()["workflow"] is True
    schedule_id = created.json()["schedule_id"]
    deadline = time.monotonic() + 20
    while alice.get("/api/v1/workflows").json()["total"] < 2:
        assert time.monotonic() < deadline, "the schedule started no workflows"
        time.sleep(0.1)
    assert alice.delete(f"/api/v1/schedules/{schedule_id}").status_code == 204
    for listed in alice.get("/api/v1/workflows").json()["workflows"]:
        done = wait_workflow(alice, listed["workflow_id"])
        assert (done["name"], done["result"]) == ("wf.numbers", {"numbers": 8})
