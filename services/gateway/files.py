"""Serving stored bytes over HTTP: Range parsing (RFC 9110 §14), the attachment header
(RFC 6266), and the one ranged response both file routes answer with."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, NamedTuple
from urllib.parse import quote

from litestar.params import HeaderParameter
from litestar.response import Stream

from services.gateway.errors import RangeNotSatisfiable

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
# What may stand in the quoted ASCII fallback: no quote or backslash (they end or escape the
# string), no % (some clients percent-decode it), no control or non-ASCII character.
_NOT_IN_FALLBACK = re.compile(r"[^A-Za-z0-9._ -]")

# The request headers of a ranged download, as route parameters.
RangeHeader = Annotated[str | None, HeaderParameter(name="Range")]
IfRangeHeader = Annotated[str | None, HeaderParameter(name="If-Range")]


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


def attachment(filename: str) -> str:
    """`attachment` naming `filename` as RFC 6266 asks: the exact name as UTF-8 in `filename*`,
    and an ASCII look-alike in `filename` for clients that do not read `filename*`."""
    name = filename or "download"
    fallback = _NOT_IN_FALLBACK.sub("_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def ranged_response(
    *,
    size: int,
    sha256: str | None,
    filename: str,
    media_type: str,
    range_header: str | None,
    if_range: str | None,
    read: Callable[[int, int], AsyncIterator[bytes]],
) -> Stream:
    """The stored bytes as an attachment: whole (200), or the single `Range` asked for (206).

    `read(start, end)` streams bytes `start` to `end`; it is called only once the range is
    known, so a RangeNotSatisfiable leaves nothing open. The ETag is the hex SHA-256.
    """
    etag = f'"{sha256}"' if sha256 else None
    # If-Range: honour the range only while the client's copy is still the stored one.
    wanted = parse_range(range_header, size) if if_range in (None, etag) else None
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": attachment(filename)}
    if etag:
        headers["ETag"] = etag
    if wanted is None:
        start, end, status_code = 0, size, 200
    else:
        start, end, status_code = wanted.start, wanted.end, 206
        headers["Content-Range"] = wanted.content_range
    headers["Content-Length"] = str(end - start)
    return Stream(read(start, end), status_code=status_code, headers=headers, media_type=media_type)
