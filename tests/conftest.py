"""Shared fixtures: Redis and PostgreSQL isolated per test, a local file server, a service launcher.

Servers come from `DOWNLINK_TEST_REDIS_URL` / `DOWNLINK_TEST_DATABASE_URL`, else testcontainers
when a Docker daemon answers, else throwaway local processes (redis-server, Debian's PostgreSQL
binaries). Without any of them the tests that need one are skipped, except under CI=true where
that is an error.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

import pytest

from tests.support import postgres_server, redis_server
from tests.support.file_server import FileServer
from tests.support.services import ServiceLauncher

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_REDIS_DBS = itertools.cycle(range(1, 16))  # DB 0 is left to whoever else uses the server
_LAUNCHER = pytest.StashKey[ServiceLauncher]()


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base Redis URL without a database number, e.g. `redis://127.0.0.1:40123`."""
    try:
        with redis_server.redis_server(tmp_path_factory.mktemp("redis")) as url:
            yield url
    except redis_server.NoRedisServer as exc:
        _unavailable(str(exc))


@pytest.fixture
def own_redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own, so its command statistics count only this test."""
    try:
        with redis_server.throwaway_redis(tmp_path) as url:
            yield url
    except redis_server.NoRedisServer as exc:
        pytest.skip(str(exc))


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis URL with a database number of its own (1-15), flushed before and after the test."""
    url = redis_server.with_db(redis_server_url, next(_REDIS_DBS))
    redis_server.flush_db(url)
    yield url
    if redis_server.ping(url):
        redis_server.flush_db(url)


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def database_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database, e.g. `postgresql://postgres@h:p/postgres`."""
    try:
        with postgres_server.postgres_server() as url:
            yield url
    except postgres_server.NoPostgresServer as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def database_template(database_server_url: str) -> Iterator[str]:
    """Name of a database migrated once per session, which `database_url` copies per test."""
    try:
        from services.gateway.migrations import migrate  # written alongside the services
    except ModuleNotFoundError as exc:
        if exc.name != "services.gateway.migrations":
            raise
        pytest.skip("services.gateway.migrations.migrate does not exist yet")
    name = postgres_server.unique_name("downlink_template_")
    url = postgres_server.create_database(database_server_url, name)
    try:
        postgres_server.run_async(lambda: migrate(url))
        yield name
    finally:
        postgres_server.drop_database(database_server_url, name)


@pytest.fixture
def database_url(database_server_url: str, database_template: str) -> Iterator[str]:
    """URL of a fresh, migrated database of this test's own, dropped afterwards."""
    name = postgres_server.unique_name("dl_test_")
    url = postgres_server.create_database(database_server_url, name, template=database_template)
    yield url
    postgres_server.drop_database(database_server_url, name)


@pytest.fixture
def empty_database_url(database_server_url: str) -> Iterator[str]:
    """URL of a fresh database with no migrations applied (for migration tests)."""
    name = postgres_server.unique_name("dl_empty_")
    url = postgres_server.create_database(database_server_url, name)
    yield url
    postgres_server.drop_database(database_server_url, name)


# -- HTTP file server and services -----------------------------------------------------------


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    """A real HTTP file server on 127.0.0.1 serving `tmp_path / "served"` (see FileServer)."""
    with FileServer(tmp_path / "served") as server:
        yield server


@pytest.fixture
def service_launcher(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceLauncher]:
    """Start services with `service_launcher("gateway", "--port", "8123", env={...})`.

    Every service still running at the end gets SIGTERM, then SIGKILL after 5 s; when the test
    fails, its report carries the last 100 lines of each service's log.
    """
    launcher = ServiceLauncher(tmp_path / "services")
    request.node.stash[_LAUNCHER] = launcher
    yield launcher
    launcher.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    launcher = item.stash.get(_LAUNCHER, None)
    if report.failed and launcher is not None:
        report.sections.extend(launcher.log_sections(100))
    return report
