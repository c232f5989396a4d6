"""Checkpoints (`ctx.checkpoint`, `ctx.checkpointed`) end to end: a task resumes where it was
after its worker is SIGKILLed, and after Redis loses everything (PostgreSQL's copy)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
import pytest
import redis

from shared.events import TASK_DECODER
from shared.streams import Lane, task_stream
from tests.tasks.conftest import STACK_ENV, enqueue, frames, start_worker, wait_task

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Pipeline, PipelineFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


def _lines(log: Path, prefix: str) -> list[str]:
    text = log.read_text() if log.exists() else ""
    return [line for line in text.splitlines() if line.startswith(prefix)]


def _squares(steps: int) -> dict[str, int]:
    return {"next": steps, "total": sum(step * step for step in range(steps))}


def test_a_sigkilled_workers_task_resumes_from_its_last_checkpoint(
    stack: Pipeline, tmp_path: Path
) -> None:
    doomed = start_worker(stack)
    alice = stack.client("alice")
    log = tmp_path / "steps.log"
    task_id = enqueue(alice, "stepper", args={"steps": 12, "log": str(log), "pause_s": 1.0})
    deadline = time.monotonic() + 20
    while not _lines(log, "saved"):
        assert time.monotonic() < deadline, "the first try never saved a step"
        time.sleep(0.02)
    survivor = start_worker(stack)
    # Killed right after a save, while the task sleeps: no step is half done.
    saved = len(_lines(log, "saved"))
    while len(_lines(log, "saved")) == saved:
        assert time.monotonic() < deadline + 20, "the first try stopped saving"
        time.sleep(0.02)
    doomed.kill()
    done = wait_task(alice, task_id, timeout=60)
    assert (done["status"], done["attempts"]) == ("completed", 2), done
    # Each step ran once: the second try began after the last step the first one saved.
    assert _lines(log, "step") == [f"step {n}" for n in range(12)]
    assert survivor.running
    uninterrupted = enqueue(alice, "stepper", args={"steps": 12, "log": str(tmp_path / "u.log")})
    assert done["result"] == wait_task(alice, uninterrupted)["result"] == _squares(12)


def test_after_redis_loses_everything_the_task_resumes_from_postgresqls_checkpoint(
    stack: Pipeline, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    start_worker(stack)
    alice = stack.client("alice")
    log = tmp_path / "steps.log"
    args = {"steps": 5, "log": str(log), "fail_once_after": 3}
    task_id = enqueue(alice, "stepper", args=args)
    # The first run fails after saving step 2; its retry waits 60 s in Redis (the backoff).
    deadline = time.monotonic() + 20
    while _checkpoint(database_url, task_id) != _squares(3):
        assert time.monotonic() < deadline, "the checkpoint never reached PostgreSQL"
        time.sleep(0.05)
    while alice.get(f"/api/v1/tasks/{task_id}").json()["status"] != "pending":
        assert time.monotonic() < deadline, "the failed try was not reported"
        time.sleep(0.05)
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()  # the retry, the checkpoint's key, the streams: all gone
    finally:
        client.close()
    done = wait_task(alice, task_id, timeout=30)
    republished = [
        TASK_DECODER.decode(body)
        for body, _ in frames(redis_url, task_stream("default", Lane.NORMAL))
    ]
    assert done["status"] == "completed", done
    assert done["result"] == _squares(5)
    assert _lines(log, "step") == [f"step {n}" for n in range(5)]
    assert [c.checkpoint for c in republished if c.task_id == task_id] == [_squares(3)]


def _checkpoint(database_url: str, task_id: str) -> Any:
    async def fetch() -> Any:
        connection = await asyncpg.connect(database_url)
        try:
            found = await connection.fetchval("SELECT checkpoint FROM tasks WHERE id = $1", task_id)
            return None if found is None else msgspec.json.decode(found)
        finally:
            await connection.close()

    return asyncio.run(fetch())
