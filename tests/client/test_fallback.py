"""A job is followed by polling where its event stream cannot be read (a proxy that buffers
or refuses Server-Sent Events): a real proxy in front of a real gateway."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

import downlink
from tests.support.app_server import AppServer

if TYPE_CHECKING:
    from downlink.client.models import JobProgress
    from tests.integration.conftest import PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

_FORWARDED = ("Authorization", "Content-Type", "Idempotency-Key")


class NoStreamsProxy(AppServer):
    """Forwards every request to `upstream`, but answers 502 to the job event streams."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.streams_refused = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/{tail:.*}", self._forward)]

    async def _forward(self, request: web.Request) -> web.Response:
        if request.path.endswith("/events"):
            self.streams_refused += 1
            return web.json_response({"status_code": 502, "detail": "no streams here"}, status=502)
        headers = {k: request.headers[k] for k in _FORWARDED if k in request.headers}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=await request.read(),
            ) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                content_type=answer.content_type,
            )


async def test_a_job_is_polled_when_its_stream_is_refused(
    pipeline_factory: PipelineFactory,
    file_server: FileServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stack = pipeline_factory()
    stack.start_downloader()
    urls = [file_server.add_file(f"tile-{n}.tif", size=4096)[0] for n in range(3)]
    seen: list[JobProgress] = []
    caplog.set_level(logging.INFO, logger="downlink.client")
    with NoStreamsProxy(stack.url) as proxy:
        async with downlink.Client(proxy.url, stack.token("alice")) as dl:
            job = await dl.download(urls)
            ended = await job.wait(progress=seen.append, timeout=60)
    assert ended.status == "completed"
    assert (seen[-1].done, seen[-1].total, seen[-1].bytes_downloaded) == (3, 3, 3 * 4096)
    assert proxy.streams_refused == 1
    assert "no event stream (HTTP 502), polling" in caplog.text
