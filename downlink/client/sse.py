"""Server-Sent Events read line by line: the job event stream's wire format, without I/O."""

from __future__ import annotations

import msgspec


class ServerEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of a stream: `id` is its place in the job's log, `type` e.g. file.downloaded."""

    id: int | None
    type: str
    data: str


class EventParser:
    """Feed it the stream's lines (without their line ends); it hands back each whole event.

    Comments (`: keep-alive`) and `retry:` lines are skipped; an event without `data` is none
    (the specification dispatches only events with data).
    """

    def __init__(self) -> None:
        self._id: int | None = None
        self._type = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and value.isdigit():
            self._id = int(value)
        return None

    def _dispatch(self) -> ServerEvent | None:
        data, self._data = self._data, []
        kind, self._type = self._type or "message", ""
        if not data:
            return None
        # The last id stays: the specification keeps it for events that carry none.
        return ServerEvent(id=self._id, type=kind, data="\n".join(data))
