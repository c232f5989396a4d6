"""A task that makes a workflow artifact, for the dashboard's artifact links:
`downlink worker --tasks tests.dashboard.artifact_tasks`."""

from __future__ import annotations

from typing import Any

from downlink import Context, task
from services.tasks.artifacts import Artifacts


@task(name="dash.report")
async def report(text: str, ctx: Context) -> dict[str, Any]:
    """Saves `text` as the workflow's file `report.txt` and lists it in the result."""
    artifacts = Artifacts.from_env()
    with artifacts.scratch() as folder:
        path = folder / "report.txt"
        path.write_text(text)
        saved = await artifacts.save(path, ctx, "report.txt", "text/plain")
    return {"artifacts": [saved]}
