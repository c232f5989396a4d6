"""Task stacks for one test: a gateway on real Redis and PostgreSQL, and task workers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

# The integration suite's stack fixtures, for these tests too.
from tests.gateway.support import stream_frames
from tests.integration.conftest import Pipeline, pipeline_factory

if TYPE_CHECKING:
    import httpx

    from tests.support.services import ServiceProcess

__all__ = ["pipeline_factory"]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TASKS = "tests.tasks.sample_tasks"
FINAL = {"completed", "failed", "cancelled", "dead"}
# Quick reclaims of a killed worker's entries, and quick releases of delayed tasks.
STACK_ENV = {
    "DOWNLINK_CLAIM_IDLE": "2",
    "DOWNLINK_RECONCILE_INTERVAL": "0.5",
    "DOWNLINK_SHUTDOWN_GRACE": "2",
}


def start_worker(stack: Pipeline, *args: str, **env: str) -> ServiceProcess:
    """`downlink worker --tasks tests.tasks.sample_tasks ARGS`, once it reads its lanes."""
    process = stack.launcher.start(
        "worker",
        "--tasks",
        SAMPLE_TASKS,
        *args,
        # The worker runs in the test's folder: the repository must be importable from there.
        env={**stack.env, "PYTHONPATH": str(ROOT), **env},
    )
    process.wait_for_log(r"tasks \S+ reading", timeout=30)
    return process


def wait_task(client: httpx.Client, task_id: str, timeout: float = 30) -> dict[str, Any]:
    """Poll the task until it ends; fail with its last status otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}").json()
        if status["status"] in FINAL:
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"task {task_id} did not end within {timeout} s: {status}")
        time.sleep(0.1)


def enqueue(client: httpx.Client, task: str, **body: Any) -> str:
    response = client.post("/api/v1/tasks", json={"task": task, **body})
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def frames(redis_url: str, stream: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Body and headers of every entry of `stream` (what the tracker or a worker reads)."""

    async def read() -> list[tuple[bytes, dict[str, Any]]]:
        client = Redis.from_url(redis_url)
        try:
            return await stream_frames(client, stream)
        finally:
            await client.aclose()

    return asyncio.run(read())
