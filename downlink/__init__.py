"""Downlink for your own code: declare tasks that Downlink's workers run.

    from downlink import task, Context, Permanent

    @task(name="create_thumbnail", max_tries=3, timeout_s=300, backoff="linear")
    async def create_thumbnail(image_id: int, ctx: Context) -> dict[str, int]:
        ctx.progress(0, 1, "resizing")
        ...

Run them with `downlink worker --tasks myapp.tasks`, enqueue them with POST /api/v1/tasks.
A thin facade: the machinery lives in services.tasks and shared.
"""

from __future__ import annotations

from services.tasks.context import Context
from services.tasks.definitions import Permanent, TaskDefinition, TaskPolicy, task

__all__ = ["Context", "Permanent", "TaskDefinition", "TaskPolicy", "task"]
