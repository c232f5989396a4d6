"""Run Downlink services (`python -m services.cli NAME ...`) as subprocesses for integration tests.

Each service runs in its own process group with its output in a log file, so a test can SIGKILL a
whole service (pool workers included) and a failing test can show what the services printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

# Service env every launch gets, under the caller's own `env`.
BASE_ENV = {
    "DOWNLINK_ALLOW_PRIVATE_NETWORKS": "true",
    "DOWNLINK_LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}
TERM_GRACE_S = 5.0
# Never go through a proxy: every service a test starts is on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceProcess:
    """One running service; signals go to its process group unless `group=False`."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log_path.parent,
                start_new_session=True,  # own session and process group, pgid == pid
            )

    def __repr__(self) -> str:
        return f"<ServiceProcess {self.name} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        """The service's process id (also its process group id)."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs (negative: killed by that signal)."""
        return self._popen.poll()

    @property
    def running(self) -> bool:
        """Whether the main process is still alive."""
        return self.returncode is None

    def send_signal(self, signum: int, group: bool = False) -> None:
        """Send `signum` to the main process, or to its whole process group."""
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, signum)
            elif self.running:
                self._popen.send_signal(signum)

    def kill(self, group: bool = True) -> None:
        """SIGKILL the service: a crash, pool workers and children included by default."""
        self.send_signal(signal.SIGKILL, group=group)

    def terminate(self, group: bool = False) -> None:
        """SIGTERM the main process (as an orchestrator would) to ask for a graceful stop."""
        self.send_signal(signal.SIGTERM, group=group)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the main process to exit; raise `subprocess.TimeoutExpired` after `timeout`."""
        return self._popen.wait(timeout=timeout)

    def log_text(self) -> str:
        """Everything the service has printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 100) -> str:
        """The last `lines` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until the log matches the regex `pattern`; fail with the log tail otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match:
                return match
            self._fail_if_exited(f"while waiting for {pattern!r} in its log")
            if time.monotonic() > deadline:
                self._fail(f"{pattern!r} did not appear in its log within {timeout} s")
            time.sleep(0.1)

    def wait_ready(self, url: str, timeout: float = 20.0) -> None:
        """Poll `GET {url}/ready` until it answers 200; fail with the log tail otherwise."""
        ready_url = url.rstrip("/") + "/ready"
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            self._fail_if_exited(f"before {ready_url} answered 200")
            try:
                with _OPENER.open(ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                exc.close()
            except (urllib.error.URLError, OSError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                self._fail(f"{ready_url} not ready within {timeout} s (last: {last})")
            time.sleep(0.1)

    def stop(self, grace: float = TERM_GRACE_S) -> None:
        """SIGTERM the group, SIGKILL whatever is left after `grace` seconds."""
        if self.running:
            self.send_signal(signal.SIGTERM, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wait(timeout=grace)
        self.send_signal(signal.SIGKILL, group=True)  # leftovers of the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(timeout=5)

    def _fail_if_exited(self, when: str) -> None:
        if not self.running:
            self._fail(f"exited with status {self.returncode} {when}")

    def _fail(self, message: str) -> None:
        pytest.fail(
            f"service {self.name} (pid {self.pid}): {message}\n"
            f"--- last 30 lines of {self.log_path} ---\n{self.log_tail(30)}",
            pytrace=False,
        )


class ServiceLauncher:
    """Start services for one test and stop them all when it ends."""

    def __init__(self, log_dir: Path, command: list[str] | None = None) -> None:
        self.log_dir = log_dir
        # What runs a service; tests of the launcher itself substitute a stand-in.
        self.command = command or [sys.executable, "-m", "services.cli"]
        self.processes: list[ServiceProcess] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        """Run `python -m services.cli NAME *args` with `env` over BASE_ENV over os.environ.

        The working directory is the test's log folder, so relative paths (`file://./data`)
        stay inside the test's tmp_path.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **BASE_ENV, **(env or {})}
        full_env.pop("PYTEST_CURRENT_TEST", None)
        argv = [*self.command, name, *args]
        log_path = self.log_dir / f"{name}-{len(self.processes) + 1}.log"
        process = ServiceProcess(name, argv, log_path, full_env)
        self.processes.append(process)
        return process

    __call__ = start

    def log_sections(self, lines: int = 100) -> list[tuple[str, str]]:
        """(title, log tail) for each service started, for a failing test's report."""
        return [
            (f"service {p.name} (pid {p.pid}, {p.log_path.name}): last {lines} lines",
             p.log_tail(lines))
            for p in self.processes
        ]  # fmt: skip

    def stop_all(self, grace: float = TERM_GRACE_S) -> None:
        """SIGTERM every service still running, then SIGKILL what is left after `grace` s."""
        for process in self.processes:
            if process.running:
                process.send_signal(signal.SIGTERM, group=True)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            process.send_signal(signal.SIGKILL, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
