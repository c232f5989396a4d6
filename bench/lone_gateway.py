"""One gateway process alone on a fresh database, for the benchmarks that time the HTTP side.

Uses DOWNLINK_BENCH_REDIS_URL / DOWNLINK_BENCH_DATABASE_URL (defaults: the local servers); the
database is made for the run and dropped after it, the Redis database flushed before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.gateway.migrations import migrate
from tests.support.ports import free_port
from tests.support.postgres_server import create_database, drop_database, unique_name
from tests.support.services import ServiceLauncher


@dataclass(frozen=True)
class LoneGateway:
    url: str
    token: str
    pid: int
    redis_url: str
    database_url: str


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def lone_gateway() -> Iterator[LoneGateway]:
    """A migrated database, a token of the user `bench`, and a gateway answering on loopback."""
    redis_url = os.environ.get("DOWNLINK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    server_url = os.environ.get(
        "DOWNLINK_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432"
    )
    name = unique_name("downlink_bench")
    database_url = create_database(server_url, name)
    try:
        asyncio.run(migrate(database_url))
        redis.Redis.from_url(redis_url).flushdb()
        port = free_port()
        env = {
            **os.environ,
            "DOWNLINK_REDIS_URL": redis_url,
            "DOWNLINK_DATABASE_URL": database_url,
            "DOWNLINK_HTTP_PORT": str(port),
            "DOWNLINK_LOG_LEVEL": "WARNING",
        }
        with tempfile.TemporaryDirectory() as tmp:
            launcher = ServiceLauncher(Path(tmp))
            token = launcher.start("token", "create", "bench", env=env)
            token.wait(timeout=30)
            bearer = token.log_text().split()[-1]
            gateway = launcher.start("gateway", env=env)
            try:
                url = f"http://127.0.0.1:{port}"
                gateway.wait_ready(url, timeout=30)
                yield LoneGateway(url, bearer, gateway.pid, redis_url, database_url)
            finally:
                launcher.stop_all()
    finally:
        drop_database(server_url, name)
