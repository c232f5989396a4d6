"""User-defined tasks end to end: a real gateway and real `downlink worker` processes on real
Redis and PostgreSQL, SIGKILL included."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from tests.tasks.conftest import ROOT, STACK_ENV, enqueue, start_worker, wait_task

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Pipeline, PipelineFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


def _tries(database_url: str, task_id: str) -> list[tuple[int, str, str | None]]:
    async def fetch() -> list[Any]:
        connection = await asyncpg.connect(database_url)
        try:
            return list(
                await connection.fetch(
                    "SELECT attempt, status, worker FROM executions"
                    " WHERE task = 'task' AND subject_id = $1 ORDER BY attempt, id",
                    task_id,
                )
            )
        finally:
            await connection.close()

    return [(r["attempt"], r["status"], r["worker"]) for r in asyncio.run(fetch())]


def test_tasks_run_with_their_arguments_results_and_progress(stack: Pipeline) -> None:
    worker = start_worker(stack, "--max-jobs", "4")
    alice = stack.client("alice")
    names = {t["name"] for t in alice.get("/api/v1/task-types").json()["task_types"]}
    assert {"add", "sync_add", "count_up"} <= names
    added = enqueue(alice, "add", args={"a": 2, "b": 3})
    summed = enqueue(alice, "sync_add", args={"a": 1, "b": 2})
    counted = enqueue(alice, "count_up", args={"steps": 5})
    done = wait_task(alice, added)
    assert (done["status"], done["result"], done["attempts"]) == ("completed", 5, 1)
    assert done["worker"]
    assert done["started_at"]
    assert done["finished_at"]
    assert done["trace_id"]
    assert wait_task(alice, summed)["result"] == {"sum": 3}
    progress = wait_task(alice, counted)
    assert progress["result"] == {"steps": 5}
    assert progress["progress"] == {"done": 5.0, "total": 5.0, "message": "step 5"}
    # ctx.logger: JSON lines with the task's id, in the trace of the request that enqueued it.
    line = worker.wait_for_log(r'\{[^\n]*"msg":"counted to 5"[^\n]*\}', timeout=5)[0]
    logged = json.loads(line)
    assert (logged["task_id"], logged["attempt"]) == (counted, 1)
    assert logged["trace_id"] == progress["trace_id"]


def test_a_failing_task_is_retried_with_its_own_policy_then_succeeds(
    stack: Pipeline, database_url: str
) -> None:
    start_worker(stack)
    alice = stack.client("alice")
    task_id = enqueue(alice, "flaky", args={"fail_times": 2})
    done = wait_task(alice, task_id)
    assert (done["status"], done["attempts"], done["result"]) == (
        "completed",
        3,
        {"succeeded_on": 3},
    )
    assert done["error"] is None
    assert [(a, s) for a, s, _ in _tries(database_url, task_id)] == [
        (1, "retried"),
        (2, "retried"),
        (3, "completed"),
    ]


def test_permanent_fails_at_once_without_a_dead_letter(stack: Pipeline) -> None:
    start_worker(stack)
    alice = stack.client("alice")
    task_id = enqueue(alice, "doomed", args={"reason": "image 7 is gone"})
    failed = wait_task(alice, task_id)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert "Permanent: image 7 is gone" in failed["error"]
    assert "Traceback" in failed["error"]
    # A task whose last try failed is dead instead, and listed: a re-drive may help it.
    exhausted = enqueue(alice, "flaky", args={"fail_times": 3})
    dead = wait_task(alice, exhausted)
    assert (dead["status"], dead["attempts"]) == ("dead", 3)
    assert "failing on purpose, try 3" in dead["error"]
    admin = stack.client("root", admin=True)
    letters = admin.get("/api/v1/dead-letters").json()["dead_letters"]
    assert [letter for letter in letters if exhausted in str(letter)], letters
    assert not [letter for letter in letters if task_id in str(letter)], letters


def test_a_timeout_or_a_result_that_is_not_json_fails_the_try(stack: Pipeline) -> None:
    start_worker(stack)
    alice = stack.client("alice")
    slow = enqueue(alice, "slow", args={"seconds": 30})
    not_json = enqueue(alice, "not_json")
    not_finite = enqueue(alice, "not_finite")
    began = time.monotonic()
    timed_out = wait_task(alice, slow, timeout=20)
    assert time.monotonic() - began < 15
    assert timed_out["status"] == "dead"
    assert "timed out after 1 s" in timed_out["error"]
    unserialisable = wait_task(alice, not_json)
    assert unserialisable["status"] == "dead"
    assert "not JSON-serialisable" in unserialisable["error"]
    # JSON would carry NaN as null: the user sees why instead of a silent None.
    nan = wait_task(alice, not_finite)
    assert (nan["status"], nan["result"]) == ("dead", None)
    assert "the task's result is not JSON-serialisable: Out of range float" in nan["error"]


def test_a_running_task_is_cancelled(stack: Pipeline, database_url: str) -> None:
    worker = start_worker(stack)
    alice = stack.client("alice")
    task_id = enqueue(alice, "count_up", args={"steps": 1000, "pause_s": 0.05})
    deadline = time.monotonic() + 20
    while alice.get(f"/api/v1/tasks/{task_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    assert alice.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
    worker.wait_for_log(rf"task {task_id} cancelled", timeout=5)
    time.sleep(0.5)
    assert wait_task(alice, task_id)["status"] == "cancelled"
    assert [s for _, s, _ in _tries(database_url, task_id)] == ["cancelled"]


def test_a_sigkilled_workers_task_is_finished_by_another_exactly_once(
    stack: Pipeline, database_url: str, tmp_path: Path
) -> None:
    doomed = start_worker(stack)
    alice = stack.client("alice")
    effects = tmp_path / "effects.txt"
    task_id = enqueue(alice, "append_once", args={"path": str(effects)})
    first_try = tmp_path / "effects.txt.started-1"
    deadline = time.monotonic() + 20
    while not first_try.exists():
        assert time.monotonic() < deadline, "the first try never started"
        time.sleep(0.05)
    survivor = start_worker(stack)
    doomed.kill()
    done = wait_task(alice, task_id, timeout=60)
    assert (done["status"], done["attempts"], done["result"]) == ("completed", 2, {"attempt": 2})
    assert effects.read_text().split() == [task_id]
    tries = _tries(database_url, task_id)
    assert [(a, s) for a, s, _ in tries] == [(1, "interrupted"), (2, "completed")]
    assert tries[1][2] != tries[0][2]
    assert survivor.running


def test_a_delayed_task_runs_after_its_delay(stack: Pipeline) -> None:
    start_worker(stack)
    alice = stack.client("alice")
    task_id = enqueue(alice, "add", args={"a": 1}, defer_s=2)
    time.sleep(1.0)
    assert alice.get(f"/api/v1/tasks/{task_id}").json()["status"] == "pending"
    done = wait_task(alice, task_id, timeout=20)
    assert done["status"] == "completed"
    waited = datetime.fromisoformat(done["started_at"]) - datetime.fromisoformat(done["created_at"])
    assert waited.total_seconds() >= 2.0


def test_a_worker_without_tasks_runs_the_installed_entry_points(
    stack: Pipeline, tmp_path: Path
) -> None:
    installed = tmp_path / "site"
    dist_info = installed / "sample_tasks-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sample-tasks\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[downlink.tasks]\nsample = tests.tasks.sample_tasks\n"
    )
    process = stack.launcher.start(
        "worker", env={**stack.env, "PYTHONPATH": f"{ROOT}{os.pathsep}{installed}"}
    )
    process.wait_for_log(r"tasks \S+ reading", timeout=30)
    alice = stack.client("alice")
    assert wait_task(alice, enqueue(alice, "add", args={"a": 4}))["result"] == 4


def test_a_worker_names_a_tasks_module_it_cannot_import(stack: Pipeline) -> None:
    process = stack.launcher.start("worker", "--tasks", "no.such.module", env=stack.env)
    assert process.wait(timeout=30) == 2
    assert "--tasks no.such.module" in process.log_text()
