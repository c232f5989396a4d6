"""The `Content-Disposition: attachment` header every route that serves stored bytes sends."""

from __future__ import annotations

import re
from urllib.parse import quote

# What may stand in the quoted ASCII fallback: no quote or backslash (they end or escape the
# string), no % (some clients percent-decode it), no control or non-ASCII character.
_NOT_IN_FALLBACK = re.compile(r"[^A-Za-z0-9._ -]")


def attachment(filename: str) -> str:
    """`attachment` naming `filename` as RFC 6266 asks: the exact name as UTF-8 in `filename*`,
    and an ASCII look-alike in `filename` for clients that do not read `filename*`."""
    name = filename or "download"
    fallback = _NOT_IN_FALLBACK.sub("_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
