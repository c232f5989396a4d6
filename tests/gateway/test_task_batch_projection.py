"""Task events projected a batch at a time equal task events projected one at a time.

As tests/gateway/test_batch_projection.py does for downloads: one stream of task events (tries
that crash, retry, fail dead or failed, succeed with or without a start of their own, progress,
checkpoints, follow-ups queued, late and duplicated events, events of no task) is projected
event by event into one database and in random, shuffled, replayed batches into its twin, and
`tasks`, `executions`, `processed_events` and the outbox must come out the same. And a fast
try's end alone records the try its start and end would.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import pytest

from services.gateway.tasks.enqueueing import enqueue
from services.gateway.tasks.queries import cancel_task
from services.gateway.tasks.records import NewTask
from services.gateway.tracker import project
from shared.events import (
    TaskCheckpointed,
    TaskEnqueued,
    TaskFailed,
    TaskProgress,
    TaskRetrying,
    TaskStarted,
    TaskSucceeded,
)
from shared.ids import EventId, TaskId, new_event_id, new_task_id
from shared.postgres import open_pool
from tests.gateway.support import user_id
from tests.gateway.test_batch_projection import (
    assert_batches_project_as_one_by_one,
    cut,
    make_twin,
    snapshot,
    twin_database_urls,
)

if TYPE_CHECKING:
    from shared.events import PipelineEvent, TaskEvent
    from shared.ids import UserId

__all__ = ["twin_database_urls"]


def _ids(task: TaskId, at: float) -> dict[str, Any]:
    return {"event_id": EventId(new_event_id()), "task_id": task, "at": at}


def _try(
    rng: random.Random, task: TaskId, attempt: int, outcome: str, at: float
) -> list[TaskEvent]:
    """One try: `crash` (a start, then nothing), `retry`, `failed`, `dead`, `done`, `fast`
    (its success alone, carrying its start; now and then a start sent after all, late)."""
    worker = f"w{attempt}"
    if outcome == "fast":
        late = [TaskStarted(**_ids(task, at), attempt=attempt, worker=worker)]
        return [_fast(task, attempt, at), *(late if rng.random() < 0.3 else [])]
    events: list[TaskEvent] = [TaskStarted(**_ids(task, at), attempt=attempt, worker=worker)]
    for n in range(rng.randint(0, 3)):
        events.append(TaskProgress(**_ids(task, at + 0.1 * (n + 1)), done=n + 1, total=3))
    if rng.random() < 0.3:
        state = {"step": rng.randint(1, 9), "seen": [1, 2]}
        events.append(TaskCheckpointed(**_ids(task, at + 0.5), state=state, attempt=attempt))
    end = _ids(task, at + 1)
    if outcome == "retry":
        events.append(TaskRetrying(**end, attempt=attempt, error="boom", worker=worker))
    elif outcome in ("failed", "dead"):
        events.append(
            TaskFailed(
                **end, error=outcome, attempts=attempt, worker=worker,
                dead_lettered=outcome == "dead",
            )
        )  # fmt: skip
    elif outcome == "done":
        events.append(TaskSucceeded(**end, result={"n": attempt}, attempt=attempt, worker=worker))
    return events


def _fast(task: TaskId, attempt: int, at: float) -> TaskSucceeded:
    """A try that ended before its start was due: its success alone, carrying its start."""
    return TaskSucceeded(
        **_ids(task, at + 1), result=[attempt], attempt=attempt, worker=f"w{attempt}", started_at=at
    )


def _life(rng: random.Random, task: TaskId, owner: UserId, base: float) -> list[TaskEvent]:
    """A task's tries in order; now and then a follow-up queued, whose own life follows."""
    tries = rng.randint(1, 3)
    events: list[TaskEvent] = []
    for attempt in range(1, tries + 1):
        at = base + 10 * attempt + rng.random()
        # A last try may crash too: its worker killed, and its entry not reclaimed yet.
        last = rng.choice(["done", "fast", "fast", "failed", "dead", "crash"])
        events += _try(rng, task, attempt, last if attempt == tries else rng.choice(
            ["retry", "retry", "crash"]), at)  # fmt: skip
    if rng.random() < 0.2:
        child = TaskId(new_task_id())
        queued = TaskEnqueued(
            **_ids(child, base + 11), parent_id=task, user_id=owner, task="noop", queue="q"
        )
        events.insert(1, queued)
        events[2:2] = _life(rng, child, owner, base + 20)
    if rng.random() < 0.2:  # progress after the end
        events.append(TaskProgress(**_ids(task, base + 100), done=9))
    return events


def _stream(rng: random.Random, lives: list[list[TaskEvent]]) -> list[PipelineEvent]:
    """Each task's events in order, the tasks interleaved at random."""
    stream: list[Any] = []
    lives = [list(life) for life in lives if life]
    while lives:
        life = rng.choice(lives)
        stream.append(life.pop(0))
        if not life:
            lives.remove(life)
    return stream


async def _tasks(pool: Any, owner: UserId, count: int) -> list[TaskId]:
    async with pool.acquire() as connection:
        new = NewTask(user_id=owner, task="noop", queue="q", args={}, priority=5)
        return [
            (await enqueue(connection, new, trace_id=None, trace_headers={})).task_id
            for _ in range(count)
        ]


@pytest.mark.parametrize("seed", range(8))
async def test_task_batches_project_as_task_events_one_by_one(
    twin_database_urls: list[str], database_server_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    async with open_pool(twin_database_urls[0]) as pool:
        owner = await user_id(pool, "alice")
        tasks = await _tasks(pool, owner, rng.randint(6, 14))
        async with pool.acquire() as connection:
            await cancel_task(connection, owner, tasks[0])  # its events change nothing
    make_twin(twin_database_urls, database_server_url)
    base = time.time()
    unknown = TaskId(new_task_id())  # a task never enqueued (deleted, say)
    lives = [_life(rng, task, owner, base) for task in [*tasks, unknown]]
    batches = cut(rng, _stream(rng, lives))

    projected = await assert_batches_project_as_one_by_one(twin_database_urls, batches)

    statuses = {row["status"] for row in projected["tasks"]}
    assert {"cancelled", "completed"} <= statuses, statuses
    runs = {(row["status"], row["task"]) for row in projected["executions"]}
    assert ("completed", "task") in runs, runs


@pytest.mark.parametrize("seed", range(4))
async def test_a_fast_tries_success_alone_records_what_its_start_and_end_would(
    twin_database_urls: list[str], database_server_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    async with open_pool(twin_database_urls[0]) as pool:
        owner = await user_id(pool, "alice")
        tasks = await _tasks(pool, owner, 8)
    make_twin(twin_database_urls, database_server_url)
    base = time.time()
    fast: list[list[TaskEvent]] = []
    for task in tasks:
        tries = rng.randint(1, 3)
        earlier = [
            _try(rng, task, attempt, rng.choice(["retry", "crash"]), base + 10 * attempt)
            for attempt in range(1, tries)
        ]
        fast.append([e for events in earlier for e in events])
        fast[-1].append(_fast(task, tries, base + 10 * tries))
    # The same tries as a worker reporting every start would send them.
    paired = [[e for event in life for e in _as_pair(event)] for life in fast]

    for url, lives in ((twin_database_urls[0], paired), (twin_database_urls[1], fast)):
        async with open_pool(url) as pool, pool.acquire() as connection:
            for event in _stream(rng, lives):
                await project(connection, event)
    async with open_pool(twin_database_urls[0]) as pool:
        expected = await snapshot(pool)
    async with open_pool(twin_database_urls[1]) as pool:
        actual = await snapshot(pool)

    assert expected["executions"]
    assert all(row["status"] != "running" for row in expected["executions"])
    for table in ("tasks", "executions"):
        assert actual[table] == expected[table], table


def _as_pair(event: TaskEvent) -> list[TaskEvent]:
    """A fast try's success as its start, then its success without the start in it."""
    if not isinstance(event, TaskSucceeded) or event.started_at is None:
        return [event]
    start = TaskStarted(
        **_ids(event.task_id, event.started_at), attempt=event.attempt, worker=event.worker
    )
    done = TaskSucceeded(
        **_ids(event.task_id, event.at),
        result=event.result,
        attempt=event.attempt,
        worker=event.worker,
    )
    return [start, done]
