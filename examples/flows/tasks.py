"""A flow runner's steps on Downlink (they ran as arq jobs): fetch -> transform -> publish.

Each step starts the next with `ctx.enqueue` and returns its id as `next_task_id`; the last
step's result is the flow's (`examples.flows.client.run_flow` follows the chain). The workers
run as they did under arq, with `--queue-name` now `--queue`:

    downlink worker --tasks examples.flows.tasks --queue flows --max-jobs 4 --job-timeout 60 \\
        --log-level INFO --env-file flows.env

`flows.env` sets FLOWS_PUBLISH_DIR, the folder `publish` writes each flow's totals to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from downlink import Context, Permanent, task

QUEUE = "flows"
PUBLISH_DIR_VARIABLE = "FLOWS_PUBLISH_DIR"
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=30)


@task(name="flows.fetch", queue=QUEUE)
async def fetch(flow: str, source_url: str, ctx: Context) -> dict[str, Any]:
    """Step 1: the flow's records, a JSON list of {category, amount}, from `source_url`."""
    async with (
        aiohttp.ClientSession(timeout=FETCH_TIMEOUT) as session,
        session.get(source_url) as response,
    ):
        response.raise_for_status()
        records: list[dict[str, Any]] = await response.json(content_type=None)
    next_task_id = await ctx.enqueue("flows.transform", flow=flow, records=records)
    return {"step": "fetch", "records": len(records), "next_task_id": next_task_id}


@task(name="flows.transform", queue=QUEUE)
async def transform(flow: str, records: list[dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """Step 2: the records' amounts summed by category."""
    totals: dict[str, float] = {}
    try:
        for record in records:
            category = str(record["category"])
            totals[category] = totals.get(category, 0.0) + float(record["amount"])
    except (KeyError, TypeError, ValueError) as exc:
        raise Permanent(f"a record without a category and a numeric amount: {exc}") from None
    next_task_id = await ctx.enqueue(
        "flows.publish", flow=flow, totals=dict(sorted(totals.items()))
    )
    return {"step": "transform", "categories": len(totals), "next_task_id": next_task_id}


@task(name="flows.publish", queue=QUEUE)
def publish(flow: str, totals: dict[str, float]) -> dict[str, Any]:
    """Step 3: the totals written to `$FLOWS_PUBLISH_DIR/{flow}.json`, whole or not at all."""
    directory = os.environ.get(PUBLISH_DIR_VARIABLE)
    if not directory:
        raise Permanent(f"{PUBLISH_DIR_VARIABLE} is not set: give the worker an --env-file")
    # Only the name's last part: a flow named "../x" must not write outside the folder.
    target = Path(directory) / f"{Path(flow).name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps({"flow": flow, "totals": totals}, sort_keys=True))
    partial.replace(target)
    return {"step": "publish", "path": str(target), "totals": totals}
