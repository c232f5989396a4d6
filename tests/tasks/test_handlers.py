"""`@task` and one try of a task (services.tasks.handlers) with an in-memory event sink."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from downlink import Context, Permanent, task
from services.tasks.handlers import TaskDead, TaskDeps, TaskRetry, run_task
from shared.errors import JobCancelled
from shared.events import RunTask, TaskEvent, TaskFailed, TaskSucceeded
from shared.ids import TaskId, UserId


class Events:
    def __init__(self) -> None:
        self.published: list[Any] = []

    async def publish(self, event: Any) -> None:
        self.published.append(event)


class NoCancels:
    def __init__(self, cancelled: bool = False) -> None:
        self.cancelled = cancelled

    async def is_cancelled(self, task_id: str) -> bool:
        return self.cancelled

    def knows_cancelled(self, task_id: str) -> bool:
        return self.cancelled

    @contextlib.asynccontextmanager
    async def watch(self, task_id: str) -> AsyncIterator[None]:
        yield


@task(name="stubborn", timeout_s=0.3, soft_timeout_s=0.1, max_tries=1)
async def stubborn() -> None:
    # Swallows its soft timeout and keeps going: the hard timeout must still end the try.
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(10)


@task(name="exp", retry_backoff_s=2)
async def exp(ctx: Context) -> int:
    raise RuntimeError(f"try {ctx.attempt}")


@task(name="lin", retry_backoff_s=5, backoff="linear")
def lin(x: int) -> int:
    return x


@task(name="bad")
async def bad() -> None:
    raise Permanent("no")


def _deps(*definitions: Any, cancelled: bool = False) -> tuple[TaskDeps, Events]:
    events = Events()
    deps = TaskDeps(
        tasks={d.name: d for d in definitions},
        publisher=events,
        cancellations=NoCancels(cancelled),
        worker="w-1",
    )
    return deps, events


def _command(name: str, **args: Any) -> RunTask:
    return RunTask(task_id=TaskId("t-1"), user_id=UserId("u-1"), task=name, args=args)


def test_the_argument_schema_leaves_the_context_out_and_names_defaults() -> None:
    schema = msgspec.json.encode(exp.schema()).decode()
    assert "ctx" not in schema
    assert exp.context_parameter == "ctx"
    assert lin.schema()["$defs"]["lin_args"]["required"] == ["x"]
    assert not lin.is_async


def test_a_list_default_is_a_fresh_copy_for_each_call() -> None:
    @task(name="defaults")
    async def tagged(tags: list[str] = ["raw"]) -> list[str]:  # noqa: B006 - what is tested
        return tags

    first, second = (msgspec.convert({}, tagged.arguments) for _ in range(2))
    assert first.tags == second.tags == ["raw"]
    assert first.tags is not second.tags


def test_backoff_is_linear_or_exponential_as_declared() -> None:
    # With a jitter of at most 5 %.
    assert [lin.policy.delay_s(n) for n in (1, 2, 3)] == pytest.approx([5, 10, 15], rel=0.051)
    assert [exp.policy.delay_s(n) for n in (1, 2, 3)] == pytest.approx([2, 4, 8], rel=0.051)


@pytest.mark.parametrize(
    "bad_policy", [{"queue": "a b"}, {"max_tries": 0}, {"priority": 11}, {"timeout_s": 0}]
)
def test_a_bad_policy_is_refused_at_declaration(bad_policy: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each names its field
        task(name="x", **bad_policy)


async def test_a_sync_task_runs_in_a_thread_and_reports_its_result() -> None:
    deps, events = _deps(lin)
    await run_task(_command("lin", x=4), deps, attempt=1)
    (succeeded,) = events.published  # a fast try: its start rides on its outcome
    assert isinstance(succeeded, TaskSucceeded)
    assert (succeeded.result, succeeded.worker) == (4, "w-1")
    assert succeeded.started_at is not None


async def test_a_failed_try_is_retried_with_the_tasks_backoff_until_its_last() -> None:
    deps, _ = _deps(exp)
    with pytest.raises(TaskRetry) as retry:
        await run_task(_command("exp"), deps, attempt=2)
    assert retry.value.retry_after_s == pytest.approx(4, rel=0.1)
    assert "RuntimeError: try 2" in retry.value.details
    with pytest.raises(TaskDead):
        await run_task(_command("exp"), deps, attempt=3)


async def test_permanent_and_bad_arguments_fail_at_once_without_a_dead_letter() -> None:
    deps, events = _deps(bad, lin)
    for command in (_command("bad"), _command("lin", x="four")):
        await run_task(command, deps, attempt=1)  # returns: the consumer acknowledges it
        failed = events.published[-1]
        assert isinstance(failed, TaskFailed)
        assert (failed.dead_lettered, failed.attempts) == (False, 1)
    permanent, bad_arguments = [e.error for e in events.published if isinstance(e, TaskFailed)]
    assert "Permanent: no" in permanent
    assert "Expected `int`, got `str` - at `$.x`" in bad_arguments


async def test_an_unknown_task_is_dead_lettered_for_a_worker_that_has_it() -> None:
    deps, _ = _deps(lin)
    with pytest.raises(TaskDead, match="no task 'missing'"):
        await run_task(_command("missing"), deps, attempt=1)


async def test_a_task_that_swallows_its_soft_timeout_is_cut_at_the_hard_one() -> None:
    deps, _ = _deps(stubborn)
    began = time.monotonic()
    with pytest.raises(TaskDead, match="hard timeout"):
        await run_task(_command("stubborn"), deps, attempt=1)
    assert time.monotonic() - began < 2


async def test_a_cancelled_task_is_skipped_before_it_starts() -> None:
    deps, events = _deps(lin, cancelled=True)
    with pytest.raises(JobCancelled):
        await run_task(_command("lin", x=1), deps, attempt=1)
    assert events.published == []


async def test_progress_is_throttled_and_the_last_one_sent_before_the_outcome() -> None:
    @task(name="ticks")
    async def ticks(ctx: Context) -> None:
        for n in range(100):
            ctx.progress(n + 1, 100)
        await asyncio.sleep(0)

    events = Events()
    deps = TaskDeps(
        tasks={"ticks": ticks},
        publisher=events,
        cancellations=NoCancels(),
        worker="w",
        progress_interval_s=10,
    )
    await run_task(_command("ticks"), deps, attempt=1)
    kinds: list[TaskEvent] = events.published
    progress = [e for e in kinds if type(e).__name__ == "TaskProgress"]
    assert 1 <= len(progress) <= 2
    assert progress[-1].done == 100  # type: ignore[attr-defined]
    assert isinstance(kinds[-1], TaskSucceeded)


async def test_a_task_whose_workers_keep_dying_is_dead_after_a_few_redeliveries() -> None:
    deps, events = _deps(lin)
    await run_task(_command("lin", x=1), deps, attempt=lin.policy.max_tries + 2)
    with pytest.raises(TaskDead, match="workers kept dying"):
        await run_task(_command("lin", x=1), deps, attempt=lin.policy.max_tries + 3)
    assert len(events.published) == 1  # the forgiven one ran; the last did not start
