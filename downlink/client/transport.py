"""Run protocol operations over httpx: `run_async` with an AsyncClient, `run_sync` with a Client.

The runners only perform steps; every decision is the operation's (protocol.py). Each run is
one client span, whose context every request carries (`traceparent`), so the gateway's spans
join the caller's trace. At most one event stream is open per run, and it is closed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from opentelemetry import trace

from downlink.client.protocol import (
    CHUNK_BYTES,
    Call,
    NextEvent,
    OpenEvents,
    Operation,
    Reply,
    Save,
    Sleep,
    Step,
    connection_failed,
)
from downlink.client.sse import EventParser, ServerEvent
from shared.telemetry import trace_headers

if TYPE_CHECKING:
    from opentelemetry.trace import Span

T = TypeVar("T")
_tracer = trace.get_tracer("downlink.client")
_EVENTS = {"Accept": "text/event-stream"}


def _span(operation: Operation[Any]) -> contextlib.AbstractContextManager[Span]:
    name = getattr(operation, "__name__", "request")
    return _tracer.start_as_current_span(f"downlink.client.{name}", kind=trace.SpanKind.CLIENT)


def _reply(response: httpx.Response, body: bytes) -> Reply:
    return Reply(status=response.status_code, headers=dict(response.headers), body=body)


def _stream_request(
    http: httpx.AsyncClient | httpx.Client, step: OpenEvents | Save, read_timeout_s: float | None
) -> httpx.Request:
    timeout = httpx.Timeout(http.timeout.connect, read=read_timeout_s)
    headers = trace_headers() | (_EVENTS if isinstance(step, OpenEvents) else {})
    params = step.params if isinstance(step, OpenEvents) else None
    return http.build_request("GET", step.path, params=params, headers=headers, timeout=timeout)


def _url(http: httpx.AsyncClient | httpx.Client, step: Step) -> str:
    path = getattr(step, "path", "")
    return str(http.base_url.join(path)) if path else str(http.base_url)


# --- async ----------------------------------------------------------------------------------


class _AsyncEvents:
    """The run's open event stream, if any."""

    def __init__(self) -> None:
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._parser = EventParser()

    async def open(self, http: httpx.AsyncClient, step: OpenEvents) -> Reply:
        await self.close()
        response = await http.send(_stream_request(http, step, step.read_timeout_s), stream=True)
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            return _reply(response, body)
        self._response, self._lines, self._parser = response, response.aiter_lines(), EventParser()
        return _reply(response, b"")

    async def next(self) -> ServerEvent | None:
        if self._lines is not None:
            with contextlib.suppress(httpx.ReadTimeout):
                async for line in self._lines:
                    if (event := self._parser.feed(line)) is not None:
                        return event
        await self.close()
        return None

    async def close(self) -> None:
        response, self._response, self._lines = self._response, None, None
        if response is not None:
            await response.aclose()


async def run_async(http: httpx.AsyncClient, operation: Operation[T]) -> T:
    """Perform the operation's steps until it returns (or raises)."""
    events = _AsyncEvents()
    outcome: Any = None
    failure: Exception | None = None
    with _span(operation):
        try:
            while True:
                try:
                    step = operation.throw(failure) if failure else operation.send(outcome)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
                outcome, failure = None, None
                try:
                    outcome = await _perform_async(http, events, step)
                except httpx.HTTPError as exc:
                    await events.close()
                    failure = connection_failed(exc, _url(http, step))
        finally:
            operation.close()
            await events.close()


async def _perform_async(http: httpx.AsyncClient, events: _AsyncEvents, step: Step) -> Any:
    match step:
        case Call():
            response = await http.request(
                step.method,
                step.path,
                params=step.params,
                content=step.body,
                headers=trace_headers() | step.headers,
            )
            return _reply(response, response.content)
        case Sleep(seconds):
            await asyncio.sleep(seconds)
            return None
        case OpenEvents():
            return await events.open(http, step)
        case NextEvent():
            return await events.next()
        case Save():
            async with http.stream("GET", step.path, headers=trace_headers()) as response:
                if response.status_code != 200:
                    return _reply(response, await response.aread())
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    step.sink.write(chunk)
                return _reply(response, b"")


# --- sync -----------------------------------------------------------------------------------


class _SyncEvents:
    """The run's open event stream, if any."""

    def __init__(self) -> None:
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] | None = None
        self._parser = EventParser()

    def open(self, http: httpx.Client, step: OpenEvents) -> Reply:
        self.close()
        response = http.send(_stream_request(http, step, step.read_timeout_s), stream=True)
        if response.status_code != 200:
            body = response.read()
            response.close()
            return _reply(response, body)
        self._response, self._lines, self._parser = response, response.iter_lines(), EventParser()
        return _reply(response, b"")

    def next(self) -> ServerEvent | None:
        if self._lines is not None:
            with contextlib.suppress(httpx.ReadTimeout):
                for line in self._lines:
                    if (event := self._parser.feed(line)) is not None:
                        return event
        self.close()
        return None

    def close(self) -> None:
        response, self._response, self._lines = self._response, None, None
        if response is not None:
            response.close()


def run_sync(http: httpx.Client, operation: Operation[T]) -> T:
    """Perform the operation's steps until it returns (or raises)."""
    events = _SyncEvents()
    outcome: Any = None
    failure: Exception | None = None
    with _span(operation):
        try:
            while True:
                try:
                    step = operation.throw(failure) if failure else operation.send(outcome)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
                outcome, failure = None, None
                try:
                    outcome = _perform_sync(http, events, step)
                except httpx.HTTPError as exc:
                    events.close()
                    failure = connection_failed(exc, _url(http, step))
        finally:
            operation.close()
            events.close()


def _perform_sync(http: httpx.Client, events: _SyncEvents, step: Step) -> Any:
    match step:
        case Call():
            response = http.request(
                step.method,
                step.path,
                params=step.params,
                content=step.body,
                headers=trace_headers() | step.headers,
            )
            return _reply(response, response.content)
        case Sleep(seconds):
            time.sleep(seconds)
            return None
        case OpenEvents():
            return events.open(http, step)
        case NextEvent():
            return events.next()
        case Save():
            with http.stream("GET", step.path, headers=trace_headers()) as response:
                if response.status_code != 200:
                    return _reply(response, response.read())
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    step.sink.write(chunk)
                return _reply(response, b"")
