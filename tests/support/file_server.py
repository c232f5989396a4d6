"""A real HTTP file server on loopback for download tests: Range, If-Range, throttling, faults.

It runs an aiohttp app on its own event loop in a background thread, so a test that blocks (on a
subprocess, on a sync client) never stalls it, and an async test can talk to it from its own loop.

Routes (every one answers HEAD too):

- `GET /files/{name}` serves `root/name` with Content-Length, a strong ETag, Last-Modified and
  `Accept-Ranges: bytes`; honours `Range: bytes=a-b | a- | -n` (206, or 416 when unsatisfiable)
  and `If-Range` (a validator that does not match gives the whole file with 200). Query knobs:
  `rate=<bytes/s>` throttles, `cd=<filename>` adds Content-Disposition, `noetag=1` drops ETag and
  Last-Modified, `norange=1` ignores Range (always 200, `Accept-Ranges: none`), `nolength=1`
  streams chunked without Content-Length, `abort_after=<bytes>` closes the connection after that
  many body bytes (a mid-transfer drop).
- `GET /status/{code}` answers that status with a small body (`retry_after=` adds Retry-After).
- `GET /flaky/{name}?fail=N&code=500&retry_after=S`: the first N requests for that name answer
  `code`, later ones serve the file like /files (same knobs).
- `GET /redirect?to=<url>&n=<k>&code=302`: a chain of k redirects ending at `to`.

`FileServer(root, rate_per_connection=B)` throttles every file response to B bytes/s (a server
that caps each connection, as Copernicus does); `in_flight` and `peak_in_flight` count the
requests being served at once to a client still connected (each holds one connection).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, urlencode

from aiohttp import web
from multidict import CIMultiDict

from tests.support.app_server import AppServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.typedefs import Middleware

CHUNK_BYTES = 256 * 1024
_GENERATE_BLOCK_BYTES = 1024 * 1024


@dataclass
class RequestRecord:
    """One request the file server received; fields fill in while it is served.

    Times are `time.monotonic()` values, comparable with the test's own clock.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    started: float
    status: int | None = None
    bytes_sent: int = 0
    ended: float | None = None
    disconnected: bool = False  # the client went away (or `abort_after` cut it) mid-body
    response_headers: dict[str, str] = field(default_factory=dict)

    @property
    def range(self) -> str | None:
        """The request's Range header, if any."""
        return self.headers.get("Range")

    @property
    def if_range(self) -> str | None:
        """The request's If-Range header, if any."""
        return self.headers.get("If-Range")

    @property
    def done(self) -> bool:
        """Whether the server has finished with this request."""
        return self.ended is not None

    @property
    def duration(self) -> float | None:
        """Seconds from the request's arrival to the end of its response."""
        return None if self.ended is None else self.ended - self.started


_RECORD = web.RequestKey("record", RequestRecord)


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """Parse a single-range `bytes=` header into [start, end); None means ignore the header."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multi-range requests are served whole (RFC 9110 allows it)
    first, sep, last = spec.strip().partition("-")
    if not sep or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "" or int(last) == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - int(last)), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    end = size if last == "" else min(int(last) + 1, size)
    return start, end


def _if_range_matches(value: str | None, etag: str | None, last_modified: str | None) -> bool:
    """Whether an If-Range validator still matches the file (strong comparison only)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return etag is not None and value == etag
    return last_modified is not None and value == last_modified


class FileServer(AppServer):
    """Serve files from `root` on 127.0.0.1 at a free port; see the module docstring for routes."""

    def __init__(self, root: Path, *, rate_per_connection: float | None = None) -> None:
        super().__init__()
        self.root = root
        self.rate_per_connection = rate_per_connection
        self.peak_in_flight = 0
        self._serving: dict[int, web.Request] = {}  # by id: a request is not hashable
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._flaky_counts: dict[str, int] = {}
        self._flaky_fail: dict[str, int] = {}
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop serving, cutting throttled transfers short, and join the thread."""
        self._stopping = True
        super().stop()

    def middlewares(self) -> list[Middleware]:
        return [self._record_middleware]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/files/{name:.+}", self._handle_file),
            web.get("/flaky/{name:.+}", self._handle_flaky),
            web.get("/status/{code}", self._handle_status),
            web.get("/redirect", self._handle_redirect),
        ]

    # -- test-facing API -------------------------------------------------------------------

    def add_file(
        self,
        name: str,
        size: int | None = None,
        data: bytes | None = None,
        seed: int | None = None,
    ) -> tuple[str, str]:
        """Write a file under `root` and return `(url, sha256_hex)`.

        Either `data` is written as is, or `size` deterministic pseudo-random bytes generated from
        `seed` (by default derived from `name`, so two files differ). Generation streams in 1 MiB
        blocks: 50 MiB takes about a quarter of a second and little memory. The file is replaced
        atomically, so rewriting a name changes its ETag.
        """
        if (size is None) == (data is None):
            raise ValueError("give exactly one of size= or data=")
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as fh:
            if data is not None:
                fh.write(data)
                digest.update(data)
            else:
                assert size is not None
                rng = random.Random(zlib.crc32(name.encode()) if seed is None else seed)
                remaining = size
                while remaining > 0:
                    block = rng.randbytes(min(_GENERATE_BLOCK_BYTES, remaining))
                    fh.write(block)
                    digest.update(block)
                    remaining -= len(block)
        os.replace(tmp, path)
        return self.file_url(name), digest.hexdigest()

    def file_url(self, name: str, **params: str | int | float) -> str:
        """URL of `/files/{name}` with optional query knobs (rate=, cd=, noetag=1, ...)."""
        return self._url(f"/files/{quote(name)}", params)

    def flaky_url(self, name: str, fail: int = 1, code: int = 500, **params: str | int) -> str:
        """URL of `/flaky/{name}` that fails `fail` times with `code`, then serves the file."""
        return self._url(f"/flaky/{quote(name)}", {"fail": fail, "code": code, **params})

    def status_url(self, code: int, **params: str | int | float) -> str:
        """URL of `/status/{code}`."""
        return self._url(f"/status/{code}", params)

    def redirect_url(self, to: str, n: int = 1, code: int = 302) -> str:
        """URL that redirects `n` times (with `code`) before landing on `to`."""
        return self._url("/redirect", {"to": to, "n": n, "code": code})

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the requests received so far, oldest first (records keep updating)."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str) -> list[RequestRecord]:
        """The requests whose path is `path` (e.g. "/files/a.bin")."""
        return [r for r in self.requests if r.path == path]

    def reset_requests(self) -> None:
        """Forget the requests recorded so far, and the peak of requests in flight."""
        with self._lock:
            self._requests.clear()
        self.peak_in_flight = self.in_flight

    @property
    def in_flight(self) -> int:
        """Requests being served whose client is still connected."""
        with self._lock:
            return sum(
                1
                for r in self._serving.values()
                if r.transport is not None and not r.transport.is_closing()
            )

    def wait_for_requests(
        self, count: int = 1, path: str | None = None, timeout: float = 10.0
    ) -> list[RequestRecord]:
        """Wait until `count` requests (to `path`, if given) have finished; return them."""
        deadline = time.monotonic() + timeout
        while True:
            done = [r for r in self.requests if r.done and (path is None or r.path == path)]
            if len(done) >= count:
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)} of {count} requests to {path or '*'} finished")
            time.sleep(0.01)

    def set_flaky(self, name: str, fail: int | None = None) -> None:
        """Reset the request counter of `/flaky/{name}`; `fail` overrides the URL's `fail=`."""
        with self._lock:
            self._flaky_counts[name] = 0
            if fail is None:
                self._flaky_fail.pop(name, None)
            else:
                self._flaky_fail[name] = fail

    def flaky_count(self, name: str) -> int:
        """How many requests `/flaky/{name}` has answered since its last reset."""
        with self._lock:
            return self._flaky_counts.get(name, 0)

    # -- internals -------------------------------------------------------------------------

    def _url(self, path: str, params: dict[str, str | int | float]) -> str:
        query = urlencode(params)
        return f"{self.url}{path}?{query}" if query else f"{self.url}{path}"

    def _path(self, name: str) -> Path:
        root = self.root.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ValueError(f"file name escapes the server root: {name!r}")
        return path

    @web.middleware
    async def _record_middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        record = RequestRecord(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDict(request.headers),
            started=time.monotonic(),
        )
        with self._lock:
            self._requests.append(record)
            self._serving[id(request)] = request
        # A client that hung up no longer counts, though its handler may not have noticed yet.
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        request[_RECORD] = record
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            record.status = exc.status
            raise
        except BaseException:
            record.status = record.status or 500
            raise
        else:
            record.status = record.status or response.status
            record.response_headers = dict(response.headers)
            if isinstance(response, web.Response) and request.method != "HEAD":
                body = response.body
                record.bytes_sent = len(body) if isinstance(body, bytes) else 0
            return response
        finally:
            record.ended = time.monotonic()
            with self._lock:
                self._serving.pop(id(request), None)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_file(request, request.match_info["name"])

    async def _handle_flaky(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        with self._lock:
            count = self._flaky_counts.get(name, 0)
            self._flaky_counts[name] = count + 1
            fail = self._flaky_fail.get(name, int(request.query.get("fail", "1")))
        if count < fail:
            return self._status_response(request, int(request.query.get("code", "500")))
        return await self._serve_file(request, name)

    async def _handle_status(self, request: web.Request) -> web.StreamResponse:
        code = request.match_info["code"]
        if not code.isdigit() or not 200 <= int(code) <= 599:
            raise web.HTTPBadRequest(text="status must be 200-599\n")
        return self._status_response(request, int(code))

    async def _handle_redirect(self, request: web.Request) -> web.StreamResponse:
        to = request.query.get("to")
        if not to:
            raise web.HTTPBadRequest(text="to= is required\n")
        n = int(request.query.get("n", "1"))
        code = int(request.query.get("code", "302"))
        location = to if n <= 1 else self.redirect_url(to, n - 1, code)
        return web.Response(status=code, text=f"see {location}\n", headers={"Location": location})

    @staticmethod
    def _status_response(request: web.Request, code: int) -> web.Response:
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        if code in (204, 304):
            return web.Response(status=code, headers=headers)
        return web.Response(status=code, text=f"status {code}\n", headers=headers)

    async def _serve_file(self, request: web.Request, name: str) -> web.StreamResponse:
        record = request[_RECORD]
        query = request.query
        try:
            path = self._path(name)
            stat = path.stat()
        except (ValueError, OSError):
            raise web.HTTPNotFound(text=f"no file {name}\n") from None
        if not path.is_file():
            raise web.HTTPNotFound(text=f"no file {name}\n")
        size = stat.st_size
        etag: str | None = None
        last_modified: str | None = None
        if query.get("noetag") != "1":
            etag = f'"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{size:x}"'
            last_modified = email.utils.formatdate(stat.st_mtime, usegmt=True)
        honour_range = query.get("norange") != "1"

        headers: dict[str, str] = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes" if honour_range else "none",
        }
        if etag is not None and last_modified is not None:
            headers["ETag"] = etag
            headers["Last-Modified"] = last_modified
        if "cd" in query:
            headers["Content-Disposition"] = f'attachment; filename="{query["cd"]}"'

        start, end, status = 0, size, 200
        range_header = request.headers.get("Range")
        if (
            range_header is not None
            and honour_range
            and _if_range_matches(request.headers.get("If-Range"), etag, last_modified)
        ):
            parsed = parse_range(range_header, size)
            if parsed == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{size}"
                record.status = 416
                return web.Response(status=416, text="range not satisfiable\n", headers=headers)
            if parsed is not None:
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"

        response = web.StreamResponse(status=status, headers=headers)
        if query.get("nolength") != "1":
            response.content_length = end - start
        record.status = status
        record.response_headers = dict(headers)
        rate = float(query["rate"]) if "rate" in query else self.rate_per_connection
        abort_after = int(query["abort_after"]) if "abort_after" in query else None
        try:
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            await self._stream(request, response, record, path, start, end, rate, abort_after)
        except ConnectionError:
            record.disconnected = True
        return response

    async def _pace(self, request: web.Request, until: float) -> None:
        """Sleep until the loop time `until`, in short naps that end once the client hangs up,
        so a throttled response counts in flight only while its connection is open."""
        loop = asyncio.get_running_loop()
        while (delay := until - loop.time()) > 0:
            if request.transport is None or request.transport.is_closing():
                return
            await asyncio.sleep(min(delay, 0.005))

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RequestRecord,
        path: Path,
        start: int,
        end: int,
        rate: float | None,
        abort_after: int | None,
    ) -> None:
        # About 20 writes a second when throttled, so the rate is smooth at any size.
        chunk = CHUNK_BYTES if rate is None else max(1, min(CHUNK_BYTES, int(rate / 20)))
        loop = asyncio.get_running_loop()
        began = loop.time()
        remaining = end - start
        with path.open("rb") as fh:
            fh.seek(start)
            while remaining > 0:
                n = min(chunk, remaining)
                if abort_after is not None:
                    n = min(n, abort_after - record.bytes_sent)
                if n <= 0 or self._stopping:
                    break
                data = fh.read(n)
                if not data:
                    break
                await response.write(data)
                record.bytes_sent += len(data)
                remaining -= len(data)
                if rate is not None:
                    await self._pace(request, began + record.bytes_sent / rate)
                    if request.transport is None or request.transport.is_closing():
                        break
        if remaining > 0:
            # Cut short (abort_after, the client hung up, or the server is stopping): drop the
            # connection so the
            # client sees a truncated body rather than a hang.
            record.disconnected = True
            if request.transport is not None:
                request.transport.close()
            return
        await response.write_eof()
