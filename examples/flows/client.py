"""Run a flow from your own code: enqueue its first step, follow `next_task_id` to the last.

async with downlink.Client(url, token) as dl:
    result = await run_flow(dl, "daily-sales", "https://example.org/sales.json")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from downlink import Client

FIRST_STEP = "flows.fetch"


async def run_flow(dl: Client, flow: str, source_url: str, timeout_s: float = 300) -> Any:
    """The last step's result; a failed step raises downlink.TaskFailedError.

    `timeout_s` bounds each step's wait, not the whole flow.
    """
    handle = await dl.enqueue(FIRST_STEP, flow=flow, source_url=source_url)
    while True:
        result = await handle.result(timeout=timeout_s)
        next_task_id = result.get("next_task_id") if isinstance(result, dict) else None
        if next_task_id is None:
            return result
        handle = dl.task(next_task_id)
