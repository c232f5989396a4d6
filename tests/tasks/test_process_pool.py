"""`@task(executor="process")`: CPU tasks in the worker's process pool, refused at declaration
when they could not run there, run by a real `downlink worker`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from downlink import Context, task
from tests.tasks.conftest import STACK_ENV, enqueue, start_worker, wait_task

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline, PipelineFactory

LIMITED_TASKS = ("--tasks", "tests.tasks.limited_tasks")


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


def _state_and_parent(pid: int) -> tuple[str, int] | None:
    """From /proc/PID/stat, "pid (comm) state ppid ..."; comm may hold spaces, so split after it."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():
        return None
    state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
    return state, int(parent)


def _alive(pid: int) -> bool:
    # A zombie has exited; only its parent (init, now) has yet to reap it.
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def test_a_function_runs_where_its_kind_says_unless_told() -> None:
    @task(name="on_the_loop")
    async def on_the_loop() -> None: ...

    @task(name="in_a_thread")
    def in_a_thread() -> None: ...

    assert (on_the_loop.executor, in_a_thread.executor) == ("async", "thread")


def cpu(n: int) -> int:
    return n


def with_context(n: int, ctx: Context) -> int:
    return n


async def coroutine(n: int) -> int:
    return n


@pytest.mark.parametrize(
    ("function", "policy", "message"),
    [
        (with_context, {}, "a process task has no Context (parameter 'ctx')"),
        (coroutine, {}, "an async function cannot have executor='process'"),
        (cpu, {"soft_timeout_s": 1}, "a process task has no soft timeout"),
    ],
)
def test_what_cannot_run_in_a_process_is_refused_at_declaration(
    function: Any, policy: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        task(name="refused", executor="process", **policy)(function)


def test_a_process_task_must_be_importable() -> None:
    def nested(n: int) -> int:
        return n

    with pytest.raises(TypeError, match="must be defined at module level"):
        task(name="nested", executor="process")(nested)
    assert task(name="cpu", executor="process")(cpu).executor == "process"


@pytest.mark.integration
def test_a_cpu_task_runs_in_a_pool_process_of_its_worker(stack: Pipeline) -> None:
    worker = start_worker(stack, *LIMITED_TASKS, "--max-jobs", "4")
    alice = stack.client("alice")
    task_ids = [enqueue(alice, "cpu_pid", args={"n": 100_000}) for _ in range(3)]
    done = [wait_task(alice, task_id, timeout=60) for task_id in task_ids]
    assert {task["status"] for task in done} == {"completed"}
    assert {task["result"]["total"] for task in done} == {sum(i * i for i in range(100_000))}
    pids = {task["result"]["pid"] for task in done}
    assert worker.pid not in pids
    assert {_state_and_parent(pid) for pid in pids} <= {("S", worker.pid), ("R", worker.pid)}


@pytest.mark.integration
def test_a_cpu_task_past_its_timeout_fails_and_the_pool_runs_on(stack: Pipeline) -> None:
    start_worker(stack, *LIMITED_TASKS)
    alice = stack.client("alice")
    spun = wait_task(alice, enqueue(alice, "cpu_spin", args={"seconds": 60}), timeout=30)
    assert spun["status"] == "dead"
    assert "timed out after 1 s" in spun["error"]
    # Its process was killed and replaced: the next CPU task runs in a fresh one.
    after = wait_task(alice, enqueue(alice, "cpu_pid", args={"n": 10}), timeout=30)
    assert after["status"] == "completed"


@pytest.mark.integration
def test_pool_processes_exit_when_their_worker_is_sigkilled(stack: Pipeline) -> None:
    worker = start_worker(stack, *LIMITED_TASKS)
    alice = stack.client("alice")
    done = wait_task(alice, enqueue(alice, "cpu_pid", args={"n": 10}), timeout=30)
    pid = done["result"]["pid"]
    assert _alive(pid)
    worker.kill(group=False)  # the worker alone, as the OOM killer would
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "a pool process outlived its worker"
