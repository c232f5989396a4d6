"""Serve an aiohttp app on 127.0.0.1 from a background thread, for stand-ins of outside APIs.

The app runs on its own event loop, so a test that blocks (on a subprocess, on a sync client)
never stalls it, and its handlers see every client: worker processes and the test alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import TYPE_CHECKING, Self

from aiohttp import web

if TYPE_CHECKING:
    from types import TracebackType

    from aiohttp.typedefs import Middleware

START_TIMEOUT_S = 10.0


class AppServer:
    """A web.Application at `url` while in the `with` block; subclasses add routes in `routes()`."""

    def __init__(self) -> None:
        self.port = 0
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._sock: socket.socket | None = None

    def routes(self) -> list[web.RouteDef]:
        """The app's routes."""
        raise NotImplementedError

    def middlewares(self) -> list[Middleware]:
        """The app's middlewares; none unless a subclass records or shapes its requests."""
        return []

    def start(self) -> None:
        """Bind a free port and serve in a background thread until `stop()`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        name = type(self).__name__
        self._thread = threading.Thread(target=self._thread_main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            self.stop()
            raise RuntimeError(f"{name} did not start: {self._error!r}")

    def stop(self) -> None:
        """Stop serving and join the thread."""
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stop_event.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); a thread must not raise
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = web.Application(middlewares=self.middlewares())
        app.add_routes(self.routes())
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            assert self._sock is not None
            await web.SockSite(runner, self._sock).start()
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()
