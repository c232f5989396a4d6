"""Tasks the tests run in real workers: `downlink worker --tasks tests.tasks.sample_tasks`."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

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


@task(name="not_finite", max_tries=1)
async def not_finite() -> float:
    return float("nan")


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


@task(name="spawn", max_tries=1)
async def spawn(task: str, args: dict[str, Any], ctx: Context) -> dict[str, str]:
    """Queues one follow-up; bad arguments raise here, before anything is sent."""
    return {"child": await ctx.enqueue(task, **args)}


@task(name="stepper", max_tries=3, retry_backoff_s=60, timeout_s=120)
async def stepper(
    steps: int, log: str, ctx: Context, pause_s: float = 0.0, fail_once_after: int = 0
) -> dict[str, int]:
    """Sums the squares of 0..steps-1, a checkpoint per step; each step and each save is
    logged, so a test sees which steps a resumed try did again. `fail_once_after` fails the
    first run that reaches that step (a marker file beside the log remembers it)."""
    state = ctx.checkpointed or {"next": 0, "total": 0}
    for step in range(state["next"], steps):
        _log(log, f"step {step}")
        state = {"next": step + 1, "total": state["total"] + step * step}
        await ctx.checkpoint(state)
        _log(log, f"saved {step}")
        failed_once = Path(f"{log}.failed")
        if step + 1 == fail_once_after and not failed_once.exists():
            failed_once.touch()
            raise RuntimeError(f"failing once after step {step}")
        await asyncio.sleep(pause_s)
    return state


def _log(path: str, line: str) -> None:
    with Path(path).open("a") as out:
        out.write(line + "\n")
