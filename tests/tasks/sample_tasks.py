"""Tasks the tests run in real workers: `downlink worker --tasks tests.tasks.sample_tasks`."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from downlink import Context, Permanent, task


@task(name="add")
async def add(a: int, b: int = 0) -> int:
    return a + b


@task(name="unique_add", unique=True)
async def unique_add(a: int) -> int:
    return a


@task(name="sync_add")
def sync_add(a: int, b: int) -> dict[str, int]:
    # A sync function runs in a thread.
    time.sleep(0.01)
    return {"sum": a + b}


@task(name="count_up")
async def count_up(steps: int, ctx: Context, pause_s: float = 0.05) -> dict[str, int]:
    for step in range(1, steps + 1):
        await asyncio.sleep(pause_s)
        ctx.progress(step, steps, f"step {step}")
    ctx.logger.info("counted to %d", steps)
    return {"steps": steps}


@task(name="flaky", max_tries=3, retry_backoff_s=0.2, backoff="linear")
async def flaky(fail_times: int, ctx: Context) -> dict[str, int]:
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"failing on purpose, try {ctx.attempt}")
    return {"succeeded_on": ctx.attempt}


@task(name="doomed", max_tries=5)
async def doomed(reason: str) -> None:
    raise Permanent(reason)


@task(name="slow", timeout_s=1, max_tries=1)
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke up"


@task(name="not_json", max_tries=1)
async def not_json() -> object:
    return object()


@task(name="append_once", max_tries=3, timeout_s=120)
async def append_once(path: str, ctx: Context) -> dict[str, int]:
    """The effect is keyed by task id, so a re-run after a crash does it once."""
    log = Path(path)
    Path(f"{path}.started-{ctx.attempt}").write_text(str(os.getpid()))
    if ctx.attempt == 1:
        await asyncio.sleep(60)  # long enough for the test to SIGKILL this worker
    done = log.read_text().split() if log.exists() else []
    if ctx.task_id not in done:
        with log.open("a") as out:
            out.write(ctx.task_id + "\n")
    return {"attempt": ctx.attempt}
