"""`downlink stack`: every service up behind one supervisor, a crashed child restarted, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.support.ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.services import ServiceLauncher

pytestmark = pytest.mark.integration


def _children(pid: int) -> dict[str, int]:
    """Service name → pid of the supervisor's children (from their command lines)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if parent == pid and b"services.cli" in argv:
            found[argv[argv.index(b"services.cli") + 1].decode()] = int(entry)
    return found


def _wait_children(pid: int, names: set[str], timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while (children := _children(pid)).keys() < names:
        assert time.monotonic() < deadline, f"children: {children}"
        time.sleep(0.1)
    return children


def test_stack_runs_everything_restarts_a_crash_and_stops_on_sigint(
    redis_url: str, database_url: str, tmp_path: Path, service_launcher: ServiceLauncher
) -> None:
    port = free_port()
    stack = service_launcher.start(
        "stack",
        env={
            "DOWNLINK_REDIS_URL": redis_url,
            "DOWNLINK_DATABASE_URL": database_url,
            "DOWNLINK_STORAGE_URL": f"file://{tmp_path / 'storage'}",
            "DOWNLINK_HTTP_PORT": str(port),
            "DOWNLINK_SHUTDOWN_GRACE": "3",
        },
    )
    stack.wait_for_log(rf"Downlink is up.*127\.0\.0\.1:{port}", timeout=60)
    services = {"gateway", "downloader", "processor", "exporter"}
    children = _wait_children(stack.pid, services)

    os.kill(children["downloader"], signal.SIGKILL)
    stack.wait_for_log(r"downloader exited with -9; restarting", timeout=10)
    restarted = _wait_children(stack.pid, services)
    assert restarted["downloader"] != children["downloader"]

    stack.send_signal(signal.SIGINT)
    try:
        assert stack.wait(timeout=20) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(f"stack did not stop on SIGINT:\n{stack.log_tail()}")
    for pid in restarted.values():
        assert not os.path.exists(f"/proc/{pid}"), "a service outlived the stack"
