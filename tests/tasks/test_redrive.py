"""Re-driving a dead task's letter: the task is pending again on the record at once, then runs
and completes; a task cancelled or completed meanwhile is refused. Real gateway and worker."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg
import httpx
import pytest

from tests.tasks.conftest import STACK_ENV, enqueue, start_worker, wait_task

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline, PipelineFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


def _sql(database_url: str, statement: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        connection = await asyncpg.connect(database_url)
        try:
            return list(await connection.fetch(statement, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


def _letter_of(admin: httpx.Client, task_id: str, timeout: float = 10) -> dict[str, Any]:
    """The dead letter of `task_id`, once the worker has written it."""
    deadline = time.monotonic() + timeout
    while True:
        letters = admin.get("/api/v1/dead-letters").json()["dead_letters"]
        found = [letter for letter in letters if letter.get("task_id") == task_id]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no dead letter names task {task_id}: {letters}"
        time.sleep(0.1)


class DeadTask(NamedTuple):
    owner: httpx.Client
    admin: httpx.Client
    task_id: str
    letter: dict[str, Any]


@pytest.fixture
def dead(stack: Pipeline) -> DeadTask:
    """A task dead after its three tries (three failures), and its dead letter."""
    start_worker(stack)
    alice = stack.client("alice")
    admin = stack.client("root", admin=True)
    task_id = enqueue(alice, "flaky", args={"fail_times": 3})
    ended = wait_task(alice, task_id)
    assert (ended["status"], ended["attempts"]) == ("dead", 3), ended
    return DeadTask(alice, admin, task_id, _letter_of(admin, task_id))


def test_a_dead_letter_names_its_task_and_a_redrive_runs_it_to_completion(
    dead: DeadTask, database_url: str
) -> None:
    alice, admin, task_id, letter = dead
    assert letter["task"] == "flaky"
    assert letter["body"]["task_id"] == task_id
    answer = admin.post(f"/api/v1/dead-letters/{letter['id']}/retry")
    assert answer.status_code == 202, answer.text
    assert answer.json()["task_id"] == task_id
    # Truthful at once: pending again, its tries and last error kept until the next outcome.
    reopened = alice.get(f"/api/v1/tasks/{task_id}").json()
    if reopened["status"] == "pending":
        assert reopened["attempts"] == 3
        assert "failing on purpose, try 3" in reopened["error"]
        assert reopened["finished_at"] is None
    else:  # the worker was quicker than this GET
        assert reopened["status"] in {"running", "completed"}, reopened
    done = wait_task(alice, task_id)
    assert (done["status"], done["result"], done["error"]) == (
        "completed",
        {"succeeded_on": 4},
        None,
    )
    assert done["attempts"] == 4
    tries = _sql(
        database_url,
        "SELECT attempt, status FROM executions WHERE subject_id = $1 ORDER BY attempt",
        task_id,
    )
    assert [(t["attempt"], t["status"]) for t in tries][-1] == (4, "completed")
    letters = admin.get("/api/v1/dead-letters").json()["dead_letters"]
    assert not [other for other in letters if other.get("task_id") == task_id]


@pytest.mark.parametrize("status", ["cancelled", "completed"])
def test_a_letter_whose_task_was_cancelled_or_completed_is_refused_and_nothing_changes(
    dead: DeadTask, database_url: str, status: str
) -> None:
    alice, admin, task_id, letter = dead
    # The task ended otherwise meanwhile (as a race with its owner or a late success leaves it).
    _sql(database_url, "UPDATE tasks SET status = $2 WHERE id = $1", task_id, status)
    before = alice.get(f"/api/v1/tasks/{task_id}").json()
    outbox = _sql(database_url, "SELECT count(*) AS n FROM outbox")[0]["n"]
    answer = admin.post(f"/api/v1/dead-letters/{letter['id']}/retry")
    assert answer.status_code == 409, answer.text
    assert status in answer.json()["detail"]
    assert alice.get(f"/api/v1/tasks/{task_id}").json() == before
    assert _sql(database_url, "SELECT count(*) AS n FROM outbox")[0]["n"] == outbox
    assert _letter_of(admin, task_id)["id"] == letter["id"]


def test_a_redriven_task_gets_its_whole_set_of_tries_again(stack: Pipeline) -> None:
    start_worker(stack)
    alice = stack.client("alice")
    admin = stack.client("root", admin=True)
    # Five failures: dead after its three tries, and the re-drive's first two fail too.
    task_id = enqueue(alice, "flaky", args={"fail_times": 5})
    assert wait_task(alice, task_id)["status"] == "dead"
    letter = _letter_of(admin, task_id)
    assert admin.post(f"/api/v1/dead-letters/{letter['id']}/retry").status_code == 202
    done = wait_task(alice, task_id)
    # Re-driven with one try left it would be dead again after try 4.
    assert (done["status"], done["result"], done["attempts"]) == (
        "completed",
        {"succeeded_on": 6},
        6,
    ), done
