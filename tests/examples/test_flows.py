"""The flow runner (examples/flows): a worker started as the arq one was, a flow from the client."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import downlink
from examples.flows.client import run_flow
from tests.tasks.conftest import ROOT, wait_task

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

RECORDS = [
    {"category": "maps", "amount": 12.5},
    {"category": "scenes", "amount": 3},
    {"category": "maps", "amount": 7.5},
]


def test_a_flow_runs_its_three_steps_on_a_worker_started_with_arqs_flags(
    stack: Pipeline, file_server: FileServer, tmp_path: Path
) -> None:
    published = tmp_path / "published"
    env_file = tmp_path / "flows.env"
    env_file.write_text(f"# the flow runner's settings\nFLOWS_PUBLISH_DIR={published}\n")
    # The console script people run, not `python -m services.cli`.
    stack.launcher.command = [str(Path(sys.executable).parent / "downlink")]
    worker = stack.launcher.start(
        "worker",
        *("--tasks", "examples.flows.tasks", "--queue-name", "flows", "--max-jobs", "4"),
        *("--job-timeout", "60", "--log-level", "INFO", "--env-file", str(env_file)),
        env={**stack.env, "PYTHONPATH": str(ROOT)},
    )
    worker.wait_for_log(r"tasks \S+ reading", timeout=30)
    source_url, _ = file_server.add_file("sales.json", data=json.dumps(RECORDS).encode())
    alice = stack.client("alice")
    token = stack.token("alice")

    async def flow() -> object:
        async with downlink.Client(stack.url, token) as dl:
            return await run_flow(dl, "daily-sales", source_url, timeout_s=30)

    result = asyncio.run(flow())
    totals = {"maps": 20.0, "scenes": 3.0}
    target = published / "daily-sales.json"
    assert result == {"step": "publish", "path": str(target), "totals": totals}
    assert json.loads(target.read_text()) == {"flow": "daily-sales", "totals": totals}
    steps = alice.get("/api/v1/tasks", params={"per_page": 10}).json()["tasks"]
    assert sorted(t["task"] for t in steps) == ["flows.fetch", "flows.publish", "flows.transform"]
    by_name = {t["task"]: t for t in steps}
    # Each step is the follow-up of the one before, in the same user's tasks.
    assert by_name["flows.transform"]["parent_id"] == by_name["flows.fetch"]["task_id"]
    assert by_name["flows.publish"]["parent_id"] == by_name["flows.transform"]["task_id"]
    assert all(wait_task(alice, t["task_id"])["queue"] == "flows" for t in steps)
