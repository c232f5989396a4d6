"""Tasks and workflows the workflow tests run in real workers:
`downlink worker --tasks tests.tasks.workflow_tasks`."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

from downlink import Canvas, Context, Permanent, chain, group, task, workflow


@task(name="wf.add")
async def add(a: int, b: int = 0) -> int:
    return a + b


@task(name="wf.double")
async def double(value: int) -> int:
    return value * 2


@task(name="wf.total")
async def total(values: list[int], ctx: Context, runs: str = "") -> int:
    """The fan-in: each run appends its task id to `runs`, so a test sees how often it ran."""
    if runs:
        with Path(runs).open("a") as log:
            log.write(f"{ctx.task_id}\n")
    return sum(values)


@task(name="wf.broken", max_tries=1)
async def broken(value: Any = None) -> None:
    raise Permanent(f"broken on {value!r}")


@task(name="wf.nap", max_tries=5, retry_backoff_s=0.1)
async def nap(value: int, seconds: float = 0.5, jitter: float = 0.0) -> int:
    await asyncio.sleep(seconds + random.uniform(0, jitter))
    return value


@task(name="wf.fan_out")
async def fan_out(n: int, seconds: float = 0.0, runs: str = "") -> Canvas:
    """A step that expands: n doubles side by side, then their total."""
    return chain(
        group(*(nap.s(value=i, seconds=seconds) for i in range(n))),
        total.s(runs=runs),
    )


@workflow(name="wf.numbers")
def numbers(a: int, b: int) -> Canvas:
    """(a + b) doubled, beside a doubled, totalled: total([2(a+b), 2a])."""
    return chain(group(chain(add.s(a=a, b=b), double.s()), double.s(value=a)), total.s())


@task(name="wf.pid")
async def pid() -> int:
    return os.getpid()
