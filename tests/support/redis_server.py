"""A Redis server for tests: from the environment, a container, or a throwaway local process.

Order: `DOWNLINK_TEST_REDIS_URL` → testcontainers' `RedisContainer` when a Docker daemon answers →
`redis-server` from PATH on a free loopback port, with nothing persisted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import redis

from tests.support.containers import docker_available
from tests.support.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ENV_VAR = "DOWNLINK_TEST_REDIS_URL"
REDIS_IMAGE = "redis:7"


class NoRedisServer(RuntimeError):
    """No Redis server could be found or started."""


def server_url(url: str) -> str:
    """`url` without its database number (`redis://h:p/3` → `redis://h:p`)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))


def with_db(url: str, db: int) -> str:
    """`url` pointing at database number `db`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))


def flush_db(url: str) -> None:
    """FLUSHDB the database `url` points at."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        client.flushdb()


def ping(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at `url`."""
    try:
        with redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        ) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@contextlib.contextmanager
def redis_server(work_dir: Path) -> Iterator[str]:
    """Yield a base Redis URL (no database number), starting a server if needed."""
    env_url = os.environ.get(ENV_VAR)
    if env_url:
        yield server_url(env_url)
        return
    if docker_available():
        with redis_container() as url:
            yield url
        return
    with throwaway_redis(work_dir) as url:
        yield url


@contextlib.contextmanager
def redis_container() -> Iterator[str]:
    """Run Redis in a container through testcontainers."""
    from testcontainers.redis import RedisContainer  # needs Docker

    with RedisContainer(REDIS_IMAGE) as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}"


@contextlib.contextmanager
def throwaway_redis(work_dir: Path, attempts: int = 3) -> Iterator[str]:
    """Run `redis-server` on a free loopback port, persisting nothing; stop it afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise NoRedisServer(
            f"no Redis: set {ENV_VAR}, start Docker, or install redis-server (apt-get install "
            "redis-server)"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "redis-server.log"
    for _ in range(attempts):
        port = free_port()
        url = f"redis://127.0.0.1:{port}"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(work_dir), "--daemonize", "no"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                if ping(url, timeout=0.5):
                    break
                time.sleep(0.02)
            else:
                continue  # exited (port taken?) or never answered: try another port
            yield url
            return
        finally:
            _stop(proc)
    raise NoRedisServer(f"redis-server did not start; see {log_path}:\n{log_path.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
