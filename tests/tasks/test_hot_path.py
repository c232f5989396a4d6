"""The task worker's hot path: what a no-op task costs in Redis commands and events, and what a
fast or long try still puts on record."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from downlink import Context, task
from services.tasks.handlers import TaskDeps, TaskRetry, run_task
from shared.broker import create_broker
from shared.events import EVENT_DECODER, RunTask, TaskStarted, TaskSucceeded
from shared.ids import TaskId, UserId
from shared.streams import EVENTS_STREAM, Lane, task_cancelled_key, task_stream
from tests.gateway.support import eventually, stream_frames
from tests.shared.test_consumer_batches import calls
from tests.tasks.conftest import ROOT, SAMPLE_TASKS, STACK_ENV, enqueue, wait_task
from tests.tasks.test_handlers import Events, NoCancels

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.services import ServiceLauncher


TASKS = 200
CANCELLED = 10


async def _events(redis: Redis) -> list[Any]:
    return [EVENT_DECODER.decode(body) for body, _ in await stream_frames(redis, EVENTS_STREAM)]


@pytest.mark.integration
async def test_no_op_tasks_share_their_start_lookups_and_send_one_event_each(
    own_redis_url: str, service_launcher: ServiceLauncher
) -> None:
    # Queued before the worker starts, so its reads take many at once; a tenth were cancelled
    # before the worker listened (only their Redis flags say so).
    broker = create_broker(own_redis_url)
    await broker.connect()
    redis = Redis.from_url(own_redis_url)
    try:
        for n in range(TASKS):
            if n < CANCELLED:
                await redis.set(task_cancelled_key(f"t-{n}"), b"1")
            command = RunTask(
                task_id=TaskId(f"t-{n}"), user_id=UserId("u"), task="add", args={"a": n}
            )
            await broker.publish(command, stream=task_stream("default", Lane.NORMAL))
        worker = service_launcher.start(
            "worker",
            *("--tasks", SAMPLE_TASKS, "--max-jobs", "50"),
            env={"DOWNLINK_REDIS_URL": own_redis_url, "PYTHONPATH": str(ROOT)},
        )
        worker.wait_for_log(r"tasks \S+ reading", timeout=30)

        async def all_ran() -> bool:
            return len(await _events(redis)) >= TASKS - CANCELLED

        await eventually(all_ran, timeout_s=30, what=f"{TASKS - CANCELLED} task events")
        await asyncio.sleep(0.3)  # anything sent late would show now
        events = await _events(redis)
        lookups = sum([await calls(redis, name) for name in ("exists", "get", "mget")])
        drops = await calls(redis, "del")
    finally:
        await redis.aclose()
        await broker.stop()

    assert all(isinstance(e, TaskSucceeded) for e in events), {type(e) for e in events}
    ran = sorted(e.task_id for e in events)
    assert ran == sorted(f"t-{n}" for n in range(CANCELLED, TASKS))  # the cancelled did not run
    assert all(e.started_at is not None and e.started_at <= e.at for e in events)
    # One EXISTS and one GET per try before (400 for 200 tasks); tries starting together now
    # share one MGET, so the count follows the reads (about 10 here), not the tasks.
    assert lookups <= TASKS // 4
    assert drops == 0  # none checkpointed: nothing to drop (200 DELs before)


def _deps(*definitions: Any, interval_s: float) -> tuple[TaskDeps, Events]:
    events = Events()
    deps = TaskDeps(
        tasks={d.name: d for d in definitions},
        publisher=events,
        cancellations=NoCancels(),
        worker="w-1",
        progress_interval_s=interval_s,
    )
    return deps, events


def _command(name: str, **args: Any) -> RunTask:
    return RunTask(task_id=TaskId("t-1"), user_id=UserId("u-1"), task=name, args=args)


@task(name="lingers")
async def lingers(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@task(name="fails_fast", max_tries=3)
async def fails_fast(ctx: Context) -> None:
    raise RuntimeError(f"try {ctx.attempt}")


async def test_a_long_try_announces_its_start_when_the_interval_passes() -> None:
    deps, events = _deps(lingers, interval_s=0.05)
    began = time.time()
    run = asyncio.create_task(run_task(_command("lingers", seconds=0.3), deps, attempt=1))
    await asyncio.sleep(0.15)
    (started,) = events.published  # while it still runs
    assert isinstance(started, TaskStarted)
    assert (started.attempt, started.worker) == (1, "w-1")
    await run
    started, succeeded = events.published
    assert isinstance(succeeded, TaskSucceeded)
    assert succeeded.started_at is None  # its start is on record already
    assert began <= started.at < succeeded.at


async def test_a_fast_try_that_fails_puts_its_start_on_record_before_its_retry() -> None:
    deps, events = _deps(fails_fast, interval_s=10)
    with pytest.raises(TaskRetry):
        await run_task(_command("fails_fast"), deps, attempt=1)
    # The consumer's retry hook sends TaskRetrying next, which the history hangs on this try.
    (started,) = events.published
    assert isinstance(started, TaskStarted)
    assert (started.attempt, started.worker) == (1, "w-1")


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


@pytest.mark.integration
def test_a_fast_tasks_try_is_in_the_executions_history_with_its_start(stack: Pipeline) -> None:
    # Needs the tracker to take the start from TaskSucceeded.started_at (no TaskStarted sent).
    stack.launcher.start(
        "worker",
        *("--tasks", SAMPLE_TASKS),
        env={**stack.env, "PYTHONPATH": str(ROOT), "DOWNLINK_PROGRESS_INTERVAL": "5"},
    ).wait_for_log(r"tasks \S+ reading", timeout=30)
    alice = stack.client("alice")
    task_id = enqueue(alice, "slow", args={"seconds": 0.3})
    assert wait_task(alice, task_id)["status"] == "completed"
    runs = [
        run
        for run in alice.get("/api/v1/executions", params={"task": "task"}).json()["executions"]
        if run["subject_id"] == task_id
    ]
    assert [(r["status"], r["attempt"], bool(r["worker"])) for r in runs] == [
        ("completed", 1, True)
    ]
    assert runs[0]["duration_s"] >= 0.3  # from the try's start, not from its end
