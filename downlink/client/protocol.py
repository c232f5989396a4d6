"""The client's logic without its I/O, shared by `Client` and `SyncClient`: the steps.

Each operation (tasks.py, downloads.py) is a generator: it yields the steps it needs (an HTTP
call, a pause, the next event of a stream, an archive to save) and gets each step's outcome
back, so request building, answer parsing, polling and waiting are written once;
transport.py performs the steps with httpx.AsyncClient or httpx.Client. An I/O failure comes
back into the generator as ConnectionFailed, where an operation may catch it (the event stream
falls back to polling).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from downlink.client.errors import ConnectionFailed, Unauthorized, error_for

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("downlink.client")

T = TypeVar("T")

API = "/api/v1"
DEFAULT_URL = "http://127.0.0.1:8000"
CHUNK_BYTES = 1 << 20
# Polling starts quick (most tasks are short) and slows down to this.
FIRST_POLL_S = 0.05
MAX_POLL_S = 1.0


# --- steps and their outcomes ---------------------------------------------------------------


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """An HTTP request; its outcome is a Reply (whatever the status)."""

    method: str
    path: str
    params: dict[str, str | int] | None = None
    body: bytes | None = None
    headers: dict[str, str] = {}


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    status: int
    headers: dict[str, str]
    body: bytes


class Sleep(msgspec.Struct, frozen=True):
    seconds: float


class OpenEvents(msgspec.Struct, frozen=True, kw_only=True):
    """Open a Server-Sent Events stream (closing any open one); the outcome is a Reply whose
    body is empty when the stream is open (200), the error body otherwise."""

    path: str
    params: dict[str, str | int]
    read_timeout_s: float


class NextEvent(msgspec.Struct, frozen=True):
    """The open stream's next event; the outcome is a ServerEvent, or None once the stream
    ended or stayed quiet past its read timeout."""


class Save(msgspec.Struct, frozen=True, kw_only=True):
    """Stream GET `path` into `sink`; the outcome is a Reply (body empty on a 200)."""

    path: str
    sink: Sink


Step = Call | Sleep | OpenEvents | NextEvent | Save
Operation = Generator[Step, Any, T]


class Sink:
    """Where Save writes: a file, hashed and counted as it is written."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.size = 0
        self._digest = hashlib.sha256()
        self._out = target.open("wb")

    def write(self, chunk: bytes) -> None:
        # Plain writes even on the async client: a chunk lands in the page cache in far less
        # time than it took to arrive over the network.
        self._out.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    def close(self) -> str:
        """Close the file; the hex SHA-256 of what was written."""
        self._out.close()
        return self._digest.hexdigest()


def connection_failed(error: Exception, url: str) -> ConnectionFailed:
    return ConnectionFailed(f"cannot reach {url}: {type(error).__name__}: {error}")


def endpoint(url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    """The gateway's URL and the headers of every request: the arguments, else DOWNLINK_URL
    (DOWNLINK_API_URL, as `downlink submit` reads it) and DOWNLINK_TOKEN."""
    base = url or os.environ.get("DOWNLINK_URL") or os.environ.get("DOWNLINK_API_URL")
    secret = token or os.environ.get("DOWNLINK_TOKEN")
    if not secret:
        raise Unauthorized("no token: pass token= or set DOWNLINK_TOKEN")
    return base or DEFAULT_URL, {"Authorization": f"Bearer {secret}"}


# --- calls ----------------------------------------------------------------------------------


def call(
    method: str,
    path: str,
    into: type[T],
    *,
    params: Mapping[str, str | int | None] | None = None,
    json: object = None,
    headers: Mapping[str, str | None] | None = None,
) -> Operation[T]:
    """One request, its answer decoded into `into`; an error status raises its DownlinkError."""
    reply: Reply = yield Call(
        method=method,
        path=path,
        params={k: v for k, v in (params or {}).items() if v is not None} or None,
        body=None if json is None else msgspec.json.encode(json),
        headers={k: v for k, v in (headers or {}).items() if v is not None}
        | ({} if json is None else {"Content-Type": "application/json"}),
    )
    log.debug("%s %s: %d", method, path, reply.status)
    if reply.status >= 400:
        raise error_for(reply.status, reply.body, reply.headers)
    return msgspec.json.decode(reply.body, type=into)


class Deadline:
    """The time limit of a wait; a timeout of None waits for as long as it takes."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._at = None if timeout_s is None else time.monotonic() + timeout_s

    def left(self, waiting_for: str) -> float:
        """Seconds left (infinite without a limit); TimeoutError once none are."""
        if self._at is None:
            return float("inf")
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{waiting_for} after {self.timeout_s} s")
        return left
