"""`downlink stack`: local Redis and PostgreSQL if none answer, migrations, supervised services.

A crashed child is restarted (with a growing pause if it keeps crashing); SIGINT or SIGTERM
stops every child with SIGTERM, waits for them, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from services.gateway.migrations import migrate
from shared.settings import Settings

SERVICES = ("gateway", "downloader", "processor", "exporter")
STATE_DIR = Path(".run")
console = Console(stderr=True)


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "localhost", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def _is_local(url: str) -> bool:
    return (urlsplit(url).hostname or "localhost") in {"localhost", "127.0.0.1", "::1"}


def _start_redis(url: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis is not reachable and redis-server is not installed")
    port = urlsplit(url).port or 6379
    data = STATE_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    console.print(f"starting redis-server on 127.0.0.1:{port} (data in {data})")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait_for(url, 6379, "redis")
    return process


def _postgres_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not found:
        raise SystemExit("PostgreSQL is not reachable and its server binaries are not installed")
    return Path(found[-1]).parent


def _postgres_owner() -> tuple[int, int] | None:
    # initdb refuses to run as root; the server then runs as the `postgres` OS user.
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam("postgres")
    return user.pw_uid, user.pw_gid


def _run_as_postgres(argv: list[str | Path]) -> None:
    owner = _postgres_owner()
    subprocess.run(
        argv,
        check=True,
        stdout=subprocess.DEVNULL,
        user=owner[0] if owner else None,
        group=owner[1] if owner else None,
    )


def _start_postgres(url: str) -> Path:
    binaries = _postgres_bin()
    port = urlsplit(url).port or 5432
    data = (STATE_DIR / "postgres").resolve()
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if owner := _postgres_owner():
            os.chown(data, *owner)
        console.print(f"initialising PostgreSQL in {data}")
        _run_as_postgres([binaries / "initdb", "-U", "postgres", "--auth=trust", "-D", data])
    console.print(f"starting PostgreSQL on 127.0.0.1:{port}")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    _run_as_postgres(
        [binaries / "pg_ctl", "-w", "-D", data, "-l", data / "server.log", "-o", options, "start"]
    )
    _wait_for(url, 5432, "postgres")
    return data


def _stop_postgres(data: Path) -> None:
    _run_as_postgres([_postgres_bin() / "pg_ctl", "-D", data, "-m", "fast", "stop"])


def _wait_for(url: str, default_port: int, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not _reachable(url, default_port):
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up at {url}")
        time.sleep(0.1)


@dataclass
class Child:
    """One supervised service process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)
    env: dict[str, str] = field(default_factory=dict)  # over the supervisor's own

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env={**os.environ, **self.env})
        self.started_at = time.monotonic()


def _metrics_env(name: str, settings: Settings) -> dict[str, str]:
    # One DOWNLINK_METRICS_PORT for the whole stack: each worker takes the next port from it
    # (downloader, processor, exporter), as three processes cannot listen on one.
    workers = [service for service in SERVICES if service != "gateway"]
    if settings.metrics_port is None or name not in workers:
        return {}
    return {"DOWNLINK_METRICS_PORT": str(settings.metrics_port + workers.index(name))}


def _supervise(children: list[Child], stop: threading.Event) -> None:
    while not stop.is_set():
        for child in children:
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            # Quick repeated crashes back off up to 30 s; a long healthy run resets the count.
            if time.monotonic() - child.started_at > 60:
                child.restarts = 0
            pause = min(30.0, 0.5 * 2**child.restarts)
            console.print(f"[yellow]{child.name} exited with {code}; restarting in {pause:.1f}s")
            time.sleep(pause)
            child.restarts += 1
            child.start()
        time.sleep(0.2)


def _wait_ready(url: str, stop: threading.Event, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)


def _stop_children(children: list[Child], grace_s: float) -> None:
    running = [c for c in children if c.process is not None and c.process.poll() is None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 5
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def run_stack(settings: Settings, *, env_file: str | None) -> int:
    """Run the whole stack in the foreground until Ctrl-C; returns the exit code."""
    redis_process = None
    postgres_data = None
    if not _reachable(settings.redis_url, 6379):
        if not _is_local(settings.redis_url):
            raise SystemExit(f"Redis at {settings.redis_url} is not reachable")
        redis_process = _start_redis(settings.redis_url)
    if not _reachable(settings.database_url, 5432):
        if not _is_local(settings.database_url):
            raise SystemExit(f"PostgreSQL at {settings.database_url} is not reachable")
        postgres_data = _start_postgres(settings.database_url)
    applied = asyncio.run(migrate(settings.database_url))
    console.print(f"migrations applied: {', '.join(applied)}" if applied else "database up to date")

    common = ["--env-file", env_file] if env_file else []
    children = [
        Child(
            name,
            [sys.executable, "-m", "services.cli", name, *common],
            env=_metrics_env(name, settings),
        )
        for name in SERVICES
    ]
    env_port = {"DOWNLINK_HTTP_PORT": str(settings.http_port)}
    os.environ.update(env_port)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.start()
        base_url = f"http://{settings.http_host}:{settings.http_port}"
        _wait_ready(f"{base_url}/ready", stop)
        console.print(
            f"[bold green]Downlink is up:[/] {base_url} (API docs at {base_url}/schema). "
            "Make a token with `downlink token create NAME`. Ctrl-C stops."
        )
        _supervise(children, stop)
    finally:
        console.print("stopping services")
        _stop_children(children, settings.shutdown_grace_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if redis_process is not None:
            redis_process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                redis_process.wait(timeout=10)
        if postgres_data is not None:
            _stop_postgres(postgres_data)
    console.print("stopped")
    return 0
