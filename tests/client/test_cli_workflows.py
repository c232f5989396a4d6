"""`downlink workflows ...` as a person or a script runs it, against a real gateway and a worker
of tests.tasks.workflow_tasks."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.client.test_cli_submit import run_cli
from tests.tasks.conftest import STACK_ENV, start_worker

if TYPE_CHECKING:
    import subprocess

    from tests.integration.conftest import Pipeline, PipelineFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    stack = pipeline_factory(**STACK_ENV)
    start_worker(stack, "--tasks", "tests.tasks.workflow_tasks")
    return stack


@pytest.fixture
def token(stack: Pipeline) -> str:
    return stack.token("alice")


def test_submit_wait_shows_every_step_and_reads_give_json(stack: Pipeline, token: str) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_cli("workflows", *argv, url=stack.url, token=token)

    done = cli("submit", "wf.numbers", "--arg", "a=1", "--arg", "b=2", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("workflow ")
    assert first.endswith("wf.numbers: completed")
    # total([2(a+b), 2a]) = 8, each step a line of the tree with its state and result.
    assert 'result: {"numbers": 8}' in done.stdout
    steps = [line for line in done.stdout.splitlines() if "wf." in line and "──" in line]
    assert len(steps) == 5, done.stdout
    assert all(" completed " in line for line in steps)
    assert any("wf.total" in line and "→ 8" in line for line in steps)
    workflow_id = first.split()[1]

    shown = json.loads(cli("status", workflow_id, "--json").stdout)
    assert (shown["status"], shown["result"]) == ("completed", {"numbers": 8})
    assert {s["status"] for s in shown["steps"]} == {"completed"}
    listed = json.loads(cli("list", "--json").stdout)
    assert [w["workflow_id"] for w in listed["workflows"]] == [workflow_id]
    table = cli("list").stdout
    assert workflow_id in table
    assert "wf.numbers" in table


def test_a_failure_and_a_cancel_show_in_the_status(stack: Pipeline, token: str) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_cli("workflows", *argv, url=stack.url, token=token)

    bad_args = cli("submit", "wf.numbers", "--arg", "a=one", "--arg", "b=2")
    assert bad_args.returncode == 1
    assert "422: steps[0].args.a: 'one' is not of type 'integer'" in bad_args.stderr
    unknown = cli("submit", "wf.nope")
    assert unknown.returncode == 1
    assert "wf.nope" in unknown.stderr
    assert json.loads(cli("list", "--json").stdout)["total"] == 0

    # No worker runs its steps: it stays running until cancelled.
    for process in stack.launcher.processes:
        if process is not stack.gateway:
            process.kill()
            process.wait(timeout=10)
    queued = json.loads(
        cli("submit", "wf.numbers", "--arg", "a=1", "--arg", "b=1", "--json").stdout
    )
    assert queued["steps"] >= 1
    cancelled = cli("cancel", queued["workflow_id"], "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    shown = cli("status", queued["workflow_id"])
    assert ": cancelled" in shown.stdout.splitlines()[0]
    again = cli("cancel", queued["workflow_id"])
    assert again.returncode == 1
    assert "409" in again.stderr
    missing = cli("status", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
    assert "404" in missing.stderr
