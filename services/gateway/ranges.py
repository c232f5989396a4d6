"""HTTP byte ranges (RFC 9110 §14): which part of a stored file a request asks for."""

from __future__ import annotations

import re
from typing import NamedTuple

from services.gateway.errors import RangeNotSatisfiable

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class ByteRange(NamedTuple):
    """Bytes `start` to `end` (exclusive) of a file of `size` bytes."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range `header` asks for, or None to send the whole file.

    Malformed headers, other units and multi-range requests are ignored (the whole file is
    sent), as RFC 9110 allows; a well-formed range beyond the end raises RangeNotSatisfiable.
    """
    if not header:
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        # "-n": the last n bytes.
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - suffix), size, size)
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(size)
    end = min(int(last) + 1, size) if last else size
    return ByteRange(start, end, size)
