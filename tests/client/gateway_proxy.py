"""A loopback proxy in front of a gateway that records every request the CLI makes, and can
cut a job's first event stream after a few events (a dropped connection, mid-stream).

Responses are streamed through as they come, so Server-Sent Events reach the client live.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.support.app_server import AppServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass(frozen=True)
class Seen:
    """One request that came through: when (monotonic), what, and its Last-Event-ID."""

    at: float
    method: str
    path: str
    last_event_id: str | None


class GatewayProxy(AppServer):
    """Forward everything to `upstream`; `cut_first_stream_after` drops the first event stream."""

    def __init__(self, upstream: str, *, cut_first_stream_after: int | None = None) -> None:
        super().__init__()
        self.upstream = upstream
        self._cut_after = cut_first_stream_after
        self._lock = threading.Lock()
        self._seen: list[Seen] = []

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/{tail:.*}", self._forward)]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            time.monotonic(), request.method, request.path, request.headers.get("Last-Event-ID")
        )
        with self._lock:
            self._seen.append(seen)
            streams = sum(1 for s in self._seen if s.path.endswith("/events"))
        cut = self._cut_after if request.path.endswith("/events") and streams == 1 else None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with (
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as upstream,
        ):
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            events = 0
            async for line in upstream.content:
                await response.write(line)
                events += line.startswith(b"id:")
                if cut is not None and events >= cut and not line.strip():
                    # Mid-stream, without the chunked terminator: the client sees a broken read.
                    assert request.transport is not None
                    request.transport.close()
                    return response
            await response.write_eof()
            return response
