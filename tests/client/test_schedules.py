"""Schedules and purge through downlink.SyncClient and `downlink schedules ...`/`downlink purge`,
against real gateway and worker processes: runs that workers complete, a purge workers obey,
and schedules that outlive a SIGKILL of every process or of the leading gateway."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import downlink
from tests.support.ports import free_port
from tests.tasks.conftest import ROOT, enqueue, start_worker, wait_task

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration


def run_cli(*argv: str, url: str, token: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`downlink ARGV` with the gateway and token from the environment, `stdin` typed in."""
    env = {**os.environ, "DOWNLINK_URL": url, "DOWNLINK_TOKEN": token, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def _completed_adds(client: httpx.Client) -> list[dict[str, Any]]:
    listed = client.get("/api/v1/tasks", params={"task": "add", "per_page": 100}).json()
    return [t for t in listed["tasks"] if t["status"] == "completed"]


def test_a_schedule_made_with_the_client_fires_runs_the_worker_completes(
    stack: Pipeline, token: str
) -> None:
    with downlink.SyncClient(stack.url, token) as dl:
        made = dl.schedule(1, "add", {"a": 2, "b": 3}, name="sums")
        assert (made.every_s, made.queue, made.paused) == (1.0, "default", False)

        def two_completed() -> bool:
            done = dl.tasks(task="add", status="completed").tasks
            return len(done) >= 2 and all(t.result == 5 for t in done)

        _until(two_completed, 15, "two completed runs")
        paused = dl.pause_schedule(made.schedule_id)
        assert (paused.paused, paused.next_run_at) == (True, None)
        assert dl.run_schedule(made.schedule_id).result(timeout=30) == 5
        assert dl.resume_schedule(made.schedule_id).next_run_at is not None
        assert [s.schedule_id for s in dl.schedules().schedules] == [made.schedule_id]
        dl.delete_schedule(made.schedule_id)
        with pytest.raises(downlink.NotFound):
            dl.get_schedule(made.schedule_id)
        with pytest.raises(downlink.Invalid) as bad:
            dl.schedule("61 * * * *", "add", {"a": 1})
    assert bad.value.status == 422
    assert bad.value.field == "cron"


def test_the_schedules_commands_print_what_they_did(stack: Pipeline, token: str) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*argv, url=stack.url, token=token)

    made = cli("schedules", "create", "add", "--every", "3600", "--arg", "a=4", "--json")
    assert made.returncode == 0, made.stderr
    schedule = json.loads(made.stdout)
    one = schedule["schedule_id"]
    assert (schedule["task"], schedule["args"], schedule["every_s"]) == ("add", {"a": 4}, 3600)
    nightly = cli("schedules", "create", "add", "--cron", "0 3 * * *", "--arg", "a=1")
    assert nightly.returncode == 0, nightly.stderr
    assert "schedule " in nightly.stdout
    assert "cron 0 3 * * * (UTC)" in nightly.stdout

    table = cli("schedules", "list").stdout
    assert one in table
    assert "every 3600 s" in table
    assert json.loads(cli("schedules", "list", "--json").stdout)["total"] == 2
    assert "queue default" in cli("schedules", "show", one).stdout
    assert "paused" in cli("schedules", "pause", one).stdout
    assert json.loads(cli("schedules", "show", one, "--json").stdout)["paused"] is True
    assert "resumed; next run" in cli("schedules", "resume", one).stdout
    ran = json.loads(cli("schedules", "run", one, "--json").stdout)
    assert ran["schedule_id"] == one
    assert cli("tasks", "status", ran["task_id"], "--json").returncode == 0
    assert f"schedule {one} deleted" in cli("schedules", "delete", one).stdout
    gone = cli("schedules", "show", one)
    assert gone.returncode == 1
    assert "404" in gone.stderr
    refused = cli("schedules", "create", "add", "--cron", "* * * *", "--arg", "a=1")
    assert refused.returncode == 1
    assert "422: cron:" in refused.stderr


def test_purge_cancels_what_waits_and_workers_never_run_it(stack: Pipeline, token: str) -> None:
    client = stack.client("alice")
    # The worker's four slots busy, so the adds wait in their lane (or in the worker's hands).
    busy = [enqueue(client, "count_up", args={"steps": 30, "pause_s": 0.1}) for _ in range(4)]
    _until(
        lambda: all(client.get(f"/api/v1/tasks/{t}").json()["status"] == "running" for t in busy),
        15,
        "the slow tasks running",
    )
    waiting = [enqueue(client, "add", args={"a": n}) for n in range(3)]

    def cli(*argv: str, token: str = token, answer: str = "") -> subprocess.CompletedProcess[str]:
        return run_cli(*argv, url=stack.url, token=token, stdin=answer)

    refused = cli("purge", "default", "--yes")
    assert refused.returncode == 1
    assert "403" in refused.stderr
    admin = stack.token("root", admin=True)
    declined = cli("purge", "default", token=admin, answer="n\n")
    assert declined.returncode == 1
    assert "nothing purged" in declined.stderr
    purged = cli("purge", "default", "--yes", token=admin)
    assert purged.returncode == 0, purged.stderr
    assert "queue default: 3 pending task(s) cancelled" in purged.stdout

    assert {wait_task(client, t)["status"] for t in busy} == {"completed"}
    time.sleep(1.0)  # the worker's slots are free: whatever it held of the adds has come up
    for task_id in waiting:
        task = client.get(f"/api/v1/tasks/{task_id}").json()
        assert (task["status"], task["attempts"], task["result"]) == ("cancelled", 0, None)


def test_schedules_outlive_a_sigkill_of_every_process(stack: Pipeline, token: str) -> None:
    client = stack.client("alice")
    with downlink.SyncClient(stack.url, token) as dl:
        dl.schedule(1, "add", {"a": 1, "b": 1})
    _until(lambda: bool(_completed_adds(client)), 15, "a first completed run")
    assert stack.gateway is not None
    for process in stack.launcher.processes:
        process.kill()
    for process in stack.launcher.processes:
        process.wait(timeout=10)
    stack.start_gateway()
    start_worker(stack, "--max-jobs", "4")
    before = len(_completed_adds(client))
    _until(lambda: len(_completed_adds(client)) >= before + 2, 20, "runs after the restart")


def test_a_second_gateway_takes_over_when_the_leader_is_killed(stack: Pipeline, token: str) -> None:
    assert stack.gateway is not None
    leader = stack.gateway
    leader.wait_for_log("scheduler: leading", timeout=10)
    standby_url = f"http://127.0.0.1:{free_port()}"
    standby = stack.launcher.start(
        "gateway", "--port", standby_url.rsplit(":", 1)[1], env=stack.env
    )
    standby.wait_ready(standby_url, timeout=30)
    with downlink.SyncClient(stack.url, token) as dl:
        made = dl.schedule(1, "add", {"a": 1})
    client = httpx.Client(
        base_url=standby_url, headers={"Authorization": f"Bearer {token}"}, trust_env=False
    )
    stack.clients.append(client)
    _until(lambda: bool(_completed_adds(client)), 15, "a first completed run")
    assert "scheduler: leading" not in standby.log_text()
    leader.kill()
    leader.wait(timeout=10)
    killed_at = time.monotonic()
    standby.wait_for_log("scheduler: leading", timeout=10)
    assert time.monotonic() - killed_at < 5
    before = len(_completed_adds(client))
    _until(lambda: len(_completed_adds(client)) >= before + 2, 15, "runs after the takeover")
    # One task per run: a run fired twice would show as two tasks made at the same moment.
    made_at = sorted(
        datetime.fromisoformat(t["created_at"])
        for t in client.get("/api/v1/tasks", params={"per_page": 100}).json()["tasks"]
    )
    assert all((b - a).total_seconds() > 0.5 for a, b in itertools.pairwise(made_at))
    shown = client.get(f"/api/v1/schedules/{made.schedule_id}").json()
    assert shown["last_task_id"] is not None
