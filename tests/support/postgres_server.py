"""A PostgreSQL server for tests, and the admin statements that give each test its database.

Order: `DOWNLINK_TEST_DATABASE_URL` (a server URL whose database is a maintenance one such as
`postgres`) → testcontainers' `PostgresContainer` when a Docker daemon answers → a throwaway
cluster from Debian's binaries in `/usr/lib/postgresql/<version>/bin`. initdb refuses to run as
root, so as root the cluster runs as the `postgres` OS user.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support.containers import docker_available
from tests.support.ports import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator

ENV_VAR = "DOWNLINK_TEST_DATABASE_URL"
POSTGRES_IMAGE = "postgres:15"
_T = TypeVar("_T")


class NoPostgresServer(RuntimeError):
    """No PostgreSQL server could be found or started."""


# -- URLs and admin statements ---------------------------------------------------------------


def database_url(server_url: str, database: str) -> str:
    """`server_url` pointing at `database` instead of its maintenance database."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def run_async(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run `factory()` to completion on a fresh event loop in a helper thread.

    Sync fixtures use this so they neither need nor disturb the test's event loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def _execute(server_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def unique_name(prefix: str) -> str:
    """A fresh database name such as `dl_test_3f9a0c12d4e5`."""
    return f"{prefix}{secrets.token_hex(6)}"


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """CREATE DATABASE `name` (copying `template`, else the empty template0); return its URL."""
    source = template or "template0"
    # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template.
    disconnect = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{source}' AND pid <> pg_backend_pid()"
    )
    statements = [disconnect] if template else []
    statements.append(f"CREATE DATABASE {_quote(name)} TEMPLATE {_quote(source)}")
    run_async(lambda: _execute(server_url, *statements))
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """DROP DATABASE `name`, disconnecting whoever is still connected."""
    run_async(lambda: _execute(server_url, f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)"))


def can_connect(server_url: str) -> bool:
    """Whether PostgreSQL accepts a connection at `server_url`."""

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(server_url, timeout=2)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return run_async(probe)


# -- servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a server URL (maintenance database `postgres`), starting a server if needed."""
    env_url = os.environ.get(ENV_VAR)
    if env_url:
        yield env_url
        return
    if docker_available():
        with postgres_container() as url:
            yield url
        return
    with throwaway_postgres() as url:
        yield url


@contextlib.contextmanager
def postgres_container() -> Iterator[str]:
    """Run PostgreSQL in a container through testcontainers."""
    from testcontainers.postgres import PostgresContainer  # needs Docker

    container = PostgresContainer(
        POSTGRES_IMAGE, username="postgres", password="postgres", dbname="postgres", driver=None
    )
    with container:
        yield container.get_connection_url()


def postgres_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` that has initdb, if any."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    return Path(max(found, key=version)).parent


class LocalPostgres:
    """A throwaway cluster from Debian's binaries that a test can stop and start again."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="downlink-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = 0
        self.running = False
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.base)
                raise NoPostgresServer(
                    "initdb refuses to run as root and there is no `postgres` OS user"
                ) from None
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self._run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    @property
    def url(self) -> str:
        """URL of the maintenance database `postgres`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, cwd=self.base, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=120, check=False, **self._run_as,
        )  # fmt: skip

    def init(self) -> None:
        init = self._run(str(self.bin_dir / "initdb"), "-U", "postgres", "--auth=trust",
                         "--no-sync", "-E", "UTF8", "--locale=C", "-D", str(self.data))  # fmt: skip
        if init.returncode != 0:
            raise NoPostgresServer(f"initdb failed:\n{init.stdout}\n{init.stderr}")

    def start(self, port: int | None = None) -> subprocess.CompletedProcess[str]:
        """Start on `port` (a free one by default); returns pg_ctl's outcome."""
        self.port = port or self.port or free_port()
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200"
        )
        result = self._run(str(self.bin_dir / "pg_ctl"), "-w", "-t", "60", "-D", str(self.data),
                           "-l", str(self.log), "-o", options, "start")  # fmt: skip
        self.running = result.returncode == 0
        return result

    def stop(self, mode: str = "immediate") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w")
        self.running = False

    def remove(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def local_postgres(attempts: int = 3) -> Iterator[LocalPostgres]:
    """A fresh, started cluster (trust auth, fsync off) on a free loopback port; removed after."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise NoPostgresServer(
            f"no PostgreSQL: set {ENV_VAR}, start Docker, or install the server "
            "(apt-get install postgresql)"
        )
    server = LocalPostgres(bin_dir)
    try:
        server.init()
        for _ in range(attempts):
            start = server.start(free_port())
            if server.running:
                break
        if not server.running:
            detail = server.log.read_text() if server.log.exists() else ""
            raise NoPostgresServer(
                f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{detail}"
            )
        yield server
    finally:
        server.remove()


@contextlib.contextmanager
def throwaway_postgres(attempts: int = 3) -> Iterator[str]:
    """Run a fresh cluster on a free loopback port; remove it after."""
    with local_postgres(attempts) as server:
        yield server.url
