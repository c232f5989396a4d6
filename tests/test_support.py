"""Tests of the test fixtures themselves: file server, Redis and PostgreSQL isolation, launcher."""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import asyncpg
import pytest
import redis

from tests.support import free_port, postgres_server
from tests.support.file_server import FileServer, parse_range
from tests.support.services import ServiceLauncher

if TYPE_CHECKING:
    from collections.abc import Iterator
    from http.client import HTTPResponse

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_NO_REDIRECT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def fetch(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", follow: bool = True
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, error statuses included."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    opener = _OPENER if follow else _NO_REDIRECT_OPENER
    try:
        response: HTTPResponse
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


# -- file server -----------------------------------------------------------------------------


def test_add_file_is_fast_deterministic_and_distinct(file_server: FileServer) -> None:
    started = time.perf_counter()
    url, digest = file_server.add_file("big.bin", size=50 * 1024 * 1024)
    assert time.perf_counter() - started < 1.5
    assert url == f"{file_server.url}/files/big.bin"
    data = (file_server.root / "big.bin").read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    assert data[: 1024 * 1024] != data[1024 * 1024 : 2 * 1024 * 1024]  # blocks differ
    # Same name and size: same bytes; another name: other bytes; explicit seed wins.
    assert file_server.add_file("big.bin", size=50 * 1024 * 1024)[1] == digest
    assert (
        file_server.add_file("a.bin", size=1000)[1] != file_server.add_file("b.bin", size=1000)[1]
    )
    assert (
        file_server.add_file("a.bin", size=1000, seed=7)[1]
        == file_server.add_file("b.bin", size=1000, seed=7)[1]
    )
    _, literal = file_server.add_file("hello.txt", data=b"hello")
    assert literal == hashlib.sha256(b"hello").hexdigest()


def test_full_get_has_validators(file_server: FileServer) -> None:
    url, digest = file_server.add_file("x.bin", size=300_000)
    status, headers, body = fetch(url)
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == digest
    assert headers["Content-Length"] == "300000"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"].startswith('"')
    assert headers["Last-Modified"].endswith("GMT")
    record = file_server.wait_for_requests(1, path="/files/x.bin")[0]
    assert (record.method, record.status, record.bytes_sent) == ("GET", 200, 300_000)
    assert record.duration is not None
    assert record.duration >= 0


def test_head(file_server: FileServer) -> None:
    url, _ = file_server.add_file("x.bin", size=1234)
    status, headers, body = fetch(url, method="HEAD")
    assert (status, headers["Content-Length"], body) == (200, "1234", b"")
    assert file_server.wait_for_requests(1)[0].method == "HEAD"


@pytest.mark.parametrize(
    ("header", "content_range", "start", "end"),
    [
        ("bytes=10-19", "bytes 10-19/1000", 10, 20),
        ("bytes=990-", "bytes 990-999/1000", 990, 1000),
        ("bytes=-5", "bytes 995-999/1000", 995, 1000),
        ("bytes=900-5000", "bytes 900-999/1000", 900, 1000),
    ],
)
def test_range_gives_206(
    file_server: FileServer, header: str, content_range: str, start: int, end: int
) -> None:
    url, _ = file_server.add_file("r.bin", size=1000)
    data = (file_server.root / "r.bin").read_bytes()
    status, headers, body = fetch(url, {"Range": header})
    assert status == 206
    assert headers["Content-Range"] == content_range
    assert headers["Content-Length"] == str(end - start)
    assert body == data[start:end]
    record = file_server.wait_for_requests(1)[0]
    assert record.range == header
    assert record.bytes_sent == end - start


def test_unsatisfiable_range_gives_416(file_server: FileServer) -> None:
    url, _ = file_server.add_file("r.bin", size=1000)
    status, headers, _ = fetch(url, {"Range": "bytes=1000-"})
    assert status == 416
    assert headers["Content-Range"] == "bytes */1000"
    assert file_server.wait_for_requests(1)[0].status == 416


def test_parse_range_edge_cases() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=5-3", 10) is None  # invalid: ignored, whole file
    assert parse_range("bytes=0-1,4-5", 10) is None  # multi-range: whole file
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=-20", 10) == (0, 10)
    assert parse_range("bytes=0-", 0) == "unsatisfiable"


def test_if_range(file_server: FileServer) -> None:
    url, _ = file_server.add_file("v.bin", size=1000)
    _, headers, _ = fetch(url, method="HEAD")
    etag, last_modified = headers["ETag"], headers["Last-Modified"]

    status, _, body = fetch(url, {"Range": "bytes=100-", "If-Range": etag})
    assert (status, len(body)) == (206, 900)
    status, _, body = fetch(url, {"Range": "bytes=100-", "If-Range": last_modified})
    assert (status, len(body)) == (206, 900)
    status, _, body = fetch(url, {"Range": "bytes=100-", "If-Range": '"stale"'})
    assert (status, len(body)) == (200, 1000)
    status, _, body = fetch(url, {"Range": "bytes=100-", "If-Range": f"W/{etag}"})
    assert (status, len(body)) == (200, 1000)  # weak validators never match

    # Rewriting the file changes its ETag, so a resume against the old one restarts.
    file_server.add_file("v.bin", size=1000, seed=99)
    _, new_headers, _ = fetch(url, method="HEAD")
    assert new_headers["ETag"] != etag
    status, _, body = fetch(url, {"Range": "bytes=100-", "If-Range": etag})
    assert (status, body) == (200, (file_server.root / "v.bin").read_bytes())
    assert [r.if_range for r in file_server.requests if r.method == "GET"][-1] == etag


def test_query_knobs(file_server: FileServer) -> None:
    file_server.add_file("k.bin", size=5000)
    data = (file_server.root / "k.bin").read_bytes()

    _, headers, _ = fetch(file_server.file_url("k.bin", cd="scene 1.tif"))
    assert headers["Content-Disposition"] == 'attachment; filename="scene 1.tif"'

    _, headers, _ = fetch(file_server.file_url("k.bin", noetag=1))
    assert "ETag" not in headers
    assert "Last-Modified" not in headers

    status, headers, body = fetch(file_server.file_url("k.bin", norange=1), {"Range": "bytes=1-"})
    assert (status, headers["Accept-Ranges"], body) == (200, "none", data)

    status, headers, body = fetch(file_server.file_url("k.bin", nolength=1))
    assert (status, body) == (200, data)
    assert "Content-Length" not in headers
    assert headers["Transfer-Encoding"] == "chunked"


def test_abort_after_cuts_the_body(file_server: FileServer) -> None:
    file_server.add_file("cut.bin", size=1_000_000)
    with pytest.raises(Exception, match="IncompleteRead"):
        fetch(file_server.file_url("cut.bin", abort_after=4096))
    record = file_server.wait_for_requests(1)[0]
    assert (record.status, record.bytes_sent, record.disconnected) == (200, 4096, True)


def test_missing_file_is_404(file_server: FileServer) -> None:
    assert fetch(f"{file_server.url}/files/nope.bin")[0] == 404
    assert fetch(f"{file_server.url}/files/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert [r.status for r in file_server.wait_for_requests(2)] == [404, 404]


def test_rate_throttles(file_server: FileServer) -> None:
    file_server.add_file("slow.bin", size=100_000)
    started = time.monotonic()
    status, _, body = fetch(file_server.file_url("slow.bin", rate=200_000))
    elapsed = time.monotonic() - started
    assert (status, len(body)) == (200, 100_000)
    assert 0.4 < elapsed < 1.5  # 100 kB at 200 kB/s: half a second


def test_rate_records_bytes_sent_when_the_client_leaves(file_server: FileServer) -> None:
    file_server.add_file("slow.bin", size=1_000_000)
    url = file_server.file_url("slow.bin", rate=100_000)
    with _OPENER.open(url, timeout=10) as response:
        assert len(response.read(20_000)) == 20_000
    record = file_server.wait_for_requests(1, timeout=10)[0]
    assert record.disconnected
    assert 20_000 <= record.bytes_sent < 400_000
    assert file_server.requests[0] is record


def test_flaky(file_server: FileServer) -> None:
    file_server.add_file("f.bin", size=100)
    url = file_server.flaky_url("f.bin", fail=2, code=503, retry_after=1)
    first, second, third = fetch(url), fetch(url), fetch(url)
    assert (first[0], first[1]["Retry-After"]) == (503, "1")
    assert second[0] == 503
    assert (third[0], len(third[2])) == (200, 100)
    assert file_server.flaky_count("f.bin") == 3

    file_server.set_flaky("f.bin")  # counter back to zero: fails twice again
    assert [fetch(url)[0] for _ in range(3)] == [503, 503, 200]
    file_server.set_flaky("f.bin", fail=0)  # override the URL's fail=2
    assert fetch(url)[0] == 200
    assert fetch(file_server.flaky_url("f.bin"), {"Range": "bytes=0-9"})[0] == 206


def test_status(file_server: FileServer) -> None:
    status, headers, body = fetch(file_server.status_url(429, retry_after=3))
    assert (status, headers["Retry-After"], body) == (429, "3", b"status 429\n")
    assert fetch(file_server.status_url(404))[0] == 404
    assert fetch(file_server.status_url(204))[:3:2] == (204, b"")


def test_redirect_chain(file_server: FileServer) -> None:
    target, _ = file_server.add_file("t.bin", size=10)
    status, headers, _ = fetch(file_server.redirect_url(target, n=3), follow=False)
    assert status == 302
    assert headers["Location"].startswith(f"{file_server.url}/redirect?")
    file_server.reset_requests()
    assert file_server.requests == []
    status, _, body = fetch(file_server.redirect_url(target, n=3))
    assert (status, len(body)) == (200, 10)
    paths = [r.path for r in file_server.wait_for_requests(4)]
    assert paths == ["/redirect", "/redirect", "/redirect", "/files/t.bin"]
    assert fetch(file_server.redirect_url("/files/t.bin", code=301), follow=False)[0] == 301


async def test_file_server_from_an_async_test(file_server: FileServer) -> None:
    url, digest = file_server.add_file("async.bin", size=3 * 1024 * 1024)
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Range": "bytes=1048576-"}) as response:
            assert response.status == 206
            rest = await response.read()
        async with session.get(url) as response:
            whole = await response.read()
    assert hashlib.sha256(whole).hexdigest() == digest
    assert rest == whole[1048576:]


def test_file_server_stops_a_throttled_transfer(tmp_path: Path) -> None:
    server = FileServer(tmp_path)
    server.start()
    server.add_file("slow.bin", size=1_000_000)
    with _OPENER.open(server.file_url("slow.bin", rate=10_000), timeout=10) as response:
        response.read(100)
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 3


# -- Redis -----------------------------------------------------------------------------------


def test_redis_server_url_has_no_database(redis_server_url: str) -> None:
    assert redis_server_url.startswith("redis://")
    assert redis_server_url.count("/") == 2


@pytest.mark.parametrize("run", range(16))  # one more than the DB numbers cycled through
def test_redis_url_is_isolated_and_empty(redis_url: str, run: int) -> None:
    db = int(redis_url.rsplit("/", 1)[1])
    assert 1 <= db <= 15
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("leftover", run)
        assert client.connection_pool.connection_kwargs["db"] == db


async def test_redis_url_with_the_async_client(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.xadd("s", {"k": "v"})
        assert await client.xlen("s") == 1
    finally:
        await client.aclose()


# -- PostgreSQL ------------------------------------------------------------------------------


async def _fetch(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def _tables(url: str) -> set[str]:
    rows = await _fetch(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"] for row in rows}


async def _databases(server_url: str) -> set[str]:
    return {row["datname"] for row in await _fetch(server_url, "SELECT datname FROM pg_database")}


async def test_empty_database_url(empty_database_url: str, database_server_url: str) -> None:
    name = empty_database_url.rsplit("/", 1)[1]
    assert name.startswith("dl_empty_")
    assert empty_database_url.startswith(database_server_url.rsplit("/", 1)[0])
    rows = await _fetch(empty_database_url, "SELECT current_database() AS db")
    assert rows[0]["db"] == name
    assert await _tables(empty_database_url) == set()


def test_template_copy_gives_each_test_its_own_database(database_server_url: str) -> None:
    """The mechanism behind `database_url`, with a stand-in for the migrations."""
    server = database_server_url
    template = postgres_server.unique_name("downlink_template_")
    template_url = postgres_server.create_database(server, template)
    clones: list[str] = []
    try:

        async def migrate() -> None:
            conn = await asyncpg.connect(template_url)
            try:
                await conn.execute("CREATE TABLE jobs (id text PRIMARY KEY)")
            finally:
                await conn.close()

        postgres_server.run_async(migrate)
        for _ in range(2):
            clones.append(postgres_server.unique_name("dl_test_"))
            url = postgres_server.create_database(server, clones[-1], template=template)
            assert postgres_server.run_async(functools.partial(_tables, url)) == {"jobs"}

            async def insert(url: str = url) -> None:
                conn = await asyncpg.connect(url)
                try:
                    assert await conn.fetchval("SELECT count(*) FROM jobs") == 0
                    await conn.execute("INSERT INTO jobs VALUES ('a')")
                finally:
                    await conn.close()

            postgres_server.run_async(insert)
    finally:
        for name in [*clones, template]:
            postgres_server.drop_database(server, name)
    remaining = postgres_server.run_async(lambda: _databases(server))
    assert remaining.isdisjoint({template, *clones})


async def test_database_url_is_fresh_and_migrated(
    database_url: str, database_server_url: str
) -> None:
    name = database_url.rsplit("/", 1)[1]
    assert name.startswith("dl_test_")
    assert await _tables(database_url)  # the migrations created tables
    assert name in await _databases(database_server_url)


# -- service launcher ------------------------------------------------------------------------

_STAND_IN = textwrap.dedent(
    """
    import http.server, signal, subprocess, sys, os
    name, port = sys.argv[1], int(sys.argv[2])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"{name} child {child.pid} env {os.environ['DOWNLINK_ALLOW_PRIVATE_NETWORKS']}"
          f" {os.environ.get('EXTRA')}", flush=True)
    if "--ignore-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ready" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


@pytest.fixture
def stand_in_launcher(tmp_path: Path) -> Iterator[ServiceLauncher]:
    script = tmp_path / "stand_in.py"
    script.write_text(_STAND_IN)
    launcher = ServiceLauncher(tmp_path / "logs", command=[sys.executable, str(script)])
    yield launcher
    launcher.stop_all(grace=1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return not stat.split(") ", 1)[1].startswith("Z")  # a zombie is dead, just not reaped


def test_launcher_ready_log_and_group_kill(stand_in_launcher: ServiceLauncher) -> None:
    port = free_port()
    service = stand_in_launcher.start("gateway", str(port), env={"EXTRA": "x"})
    service.wait_ready(f"http://127.0.0.1:{port}", timeout=10)
    match = service.wait_for_log(r"gateway child (\d+) env true x", timeout=5)
    child = int(match.group(1))
    assert os.getpgid(child) == service.pid
    service.kill()
    assert service.wait(timeout=5) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    sections = stand_in_launcher.log_sections()
    assert sections[0][0].startswith(f"service gateway (pid {service.pid}")
    assert "gateway child" in sections[0][1]


def test_launcher_terminate_and_stop_all(stand_in_launcher: ServiceLauncher) -> None:
    polite = stand_in_launcher.start("downloader", str(free_port()))
    stubborn = stand_in_launcher.start("processor", str(free_port()), "--ignore-term")
    polite.wait_for_log("child")
    stubborn.wait_for_log("child")
    polite.terminate()
    assert polite.wait(timeout=5) == -signal.SIGTERM
    started = time.monotonic()
    stand_in_launcher.stop_all(grace=0.5)
    assert stubborn.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_wait_ready_fails_with_the_log_when_the_service_exits(
    stand_in_launcher: ServiceLauncher,
) -> None:
    service = stand_in_launcher.start("exporter", "not-a-port")
    with pytest.raises(pytest.fail.Exception, match="exited with status 1") as failure:
        service.wait_ready("http://127.0.0.1:9", timeout=10)
    assert "ValueError" in str(failure.value)
