"""Tasks under fleet-wide limits, and CPU tasks for the process pool, run by real workers:
`downlink worker --tasks tests.tasks.sample_tasks --tasks tests.tasks.limited_tasks`."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from downlink import Context, task

# NCBI allows 3 requests a second per API key, whichever worker sends them. The window is a
# little longer than the server's, since the network delays requests unevenly once granted.
CALLS_PER_WINDOW = 3
WINDOW_S = 1.1


@task(name="limited_get", max_tries=1, timeout_s=60)
async def limited_get(url: str, ctx: Context) -> int:
    await ctx.rate_limit("ncbi", CALLS_PER_WINDOW, per_s=WINDOW_S)
    return await asyncio.to_thread(_status_of, url)


def _status_of(url: str) -> int:
    request = urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status


@task(name="hold_slot", max_tries=1, timeout_s=120)
async def hold_slot(log: str, hold_s: float, n: int, ctx: Context) -> int:
    """Hold one of `n` "gpu" slots for `hold_s`, writing when it got it and when it let go."""
    async with ctx.concurrency("gpu", n):
        _note(log, f"in {time.time()} {ctx.task_id}")
        await asyncio.sleep(hold_s)
        _note(log, f"out {time.time()} {ctx.task_id}")
    return os.getpid()


def _note(log: str, line: str) -> None:
    # One short O_APPEND write a line, so lines from several processes never interleave.
    with Path(log).open("a") as out:
        out.write(line + "\n")


@task(name="cpu_pid", executor="process")
def cpu_pid(n: int) -> dict[str, int]:
    """CPU work in the worker's pool: which process ran it, and the work's result."""
    return {"pid": os.getpid(), "total": sum(i * i for i in range(n))}


@task(name="cpu_spin", executor="process", timeout_s=1, max_tries=1)
def cpu_spin(seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return "spun"
