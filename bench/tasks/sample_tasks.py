"""The bench's tasks as Downlink users write them; `downlink worker --tasks sample_tasks`.

Their bodies do nothing (or sleep): what is measured is the machinery around them, which
records each task in PostgreSQL (see bench/README.md, "Tasks").
"""

from __future__ import annotations

import asyncio

from task_workloads import NOOP, QUEUE, SLEEP

from downlink import task


@task(name=NOOP, queue=QUEUE)
async def noop() -> None:
    return None


@task(name=SLEEP, queue=QUEUE)
async def sleep(ms: float) -> None:
    await asyncio.sleep(ms / 1e3)
