"""`downlink tasks ...` as a person or a script runs it: a real process against a real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.tasks.conftest import ROOT

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration


def downlink(*argv: str, url: str, token: str) -> subprocess.CompletedProcess[str]:
    """`downlink ARGV` with the gateway and token from the environment, as a user sets them."""
    env = {**os.environ, "DOWNLINK_URL": url, "DOWNLINK_TOKEN": token, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def test_enqueue_wait_json_status_list_and_types(stack: Pipeline, token: str) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return downlink(*argv, url=stack.url, token=token)

    done = run("tasks", "enqueue", "add", "a=2", "--arg", "b=3", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert (task["task"], task["status"], task["result"], task["args"]) == (
        "add",
        "completed",
        5,
        {"a": 2, "b": 3},
    )

    queued = run("tasks", "enqueue", "count_up", "--json-args", '{"steps": 2}', "--json")
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["status"] == "pending"

    shown = run("tasks", "status", task["task_id"])
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout
    assert "5" in shown.stdout

    listed = json.loads(run("tasks", "list", "--task", "add", "--json").stdout)
    assert [t["task_id"] for t in listed["tasks"]] == [task["task_id"]]
    table = run("tasks", "list").stdout
    assert task["task_id"] in table
    assert "count_up" in table

    types = {t["name"]: t for t in json.loads(run("tasks", "types", "--json").stdout)}
    assert (types["add"]["queue"], types["flaky"]["policy"]["max_tries"]) == ("default", 3)
    assert "a: integer, b?: integer" in run("tasks", "types").stdout


def test_failures_are_reported_with_the_apis_message(stack: Pipeline, token: str) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return downlink(*argv, url=stack.url, token=token)

    dead = run("tasks", "enqueue", "doomed", "--arg", "reason=image 7 is gone", "--wait")
    assert dead.returncode == 1
    assert "Permanent: image 7 is gone" in dead.stdout
    assert "Traceback" in dead.stdout

    invalid = run("tasks", "enqueue", "add", "--arg", "a=two")
    assert invalid.returncode == 1
    assert "422: args.a:" in invalid.stderr

    done = json.loads(run("tasks", "enqueue", "add", "--arg", "a=1", "--wait", "--json").stdout)
    again = run("tasks", "cancel", done["task_id"])
    assert again.returncode == 1
    assert "409" in again.stderr
    assert "already ended" in again.stderr

    later = json.loads(
        run("tasks", "enqueue", "add", "--arg", "a=1", "--defer", "600", "--json").stdout
    )
    cancelled = run("tasks", "cancel", later["task_id"], "--json")
    assert json.loads(cancelled.stdout) == {"task_id": later["task_id"], "status": "cancelled"}

    refused = downlink("tasks", "list", url=stack.url, token="dl_wrong")
    assert refused.returncode == 1
    assert "401: invalid or revoked token" in refused.stderr
