"""The rules a job's body must meet beyond its types: URLs, metadata, composites.

Each returns what is wrong (field path first) or None; the schemas raise it as a ValueError,
which msgspec reports as a validation error of the body.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from shared.composites import COMPOSITE_ROLES, match_band

if TYPE_CHECKING:
    from collections.abc import Sequence

    from services.gateway.jobs.specs import CompositeRequest, FileRequest

ALLOWED_SCHEMES = frozenset({"http", "https"})
# `metadata` is stored as jsonb and served back in every status and listing: bounded so that
# whatever is accepted can always be encoded again (deep nesting exhausts the stack).
MAX_METADATA_DEPTH = 32
MAX_METADATA_BYTES = 64 * 1024
NUL = "\x00"
NUL_PROBLEM = "must not contain NUL (\\u0000) characters"


def metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Why `metadata` cannot be stored and served back (field path first), or None."""
    # Walked with a stack, not recursion: the point is to refuse what is too deep to recurse.
    # Every value and every character takes at least a byte of JSON, so the budget stops the
    # walk of a huge value long before it is encoded.
    budget = MAX_METADATA_BYTES
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(metadata, ())]
    while pending and budget >= 0:
        value, keys = pending.pop()
        budget -= 1
        if isinstance(value, str):
            budget -= len(value)
            if NUL in value:
                return f"{_json_path('metadata', keys)}: {NUL_PROBLEM}"
        elif isinstance(value, dict | list):
            if len(keys) >= MAX_METADATA_DEPTH:
                where = _json_path("metadata", keys)
                return f"metadata: nested deeper than {MAX_METADATA_DEPTH} levels (at {where})"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    budget -= len(key)
                    if NUL in key:
                        return f"{_json_path('metadata', keys)}: key {key!r} {NUL_PROBLEM}"
                pending.append((item, (*keys, key)))
    size = len(msgspec.json.encode(metadata)) if budget >= 0 else None
    if size is None or size > MAX_METADATA_BYTES:
        measured = f"{size} bytes" if size is not None else "larger"
        return f"metadata: {measured} as JSON; at most {MAX_METADATA_BYTES} bytes"
    return None


def _json_path(field: str, keys: Sequence[str | int]) -> str:
    return field + "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in keys)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be downloaded, or None when it is an http(s) URL with a host."""
    if any(char.isspace() or ord(char) < 32 for char in url):
        return "URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port raises on a malformed one
    except ValueError as exc:
        return f"malformed URL: {exc}"
    scheme = parts.scheme.lower()
    if not scheme:
        return "missing scheme (http or https)"
    if scheme not in ALLOWED_SCHEMES:
        return f"unsupported scheme {scheme!r}"
    if not parts.hostname:
        return "missing host"
    return None


def composite_problem(composite: CompositeRequest, files: Sequence[FileRequest]) -> str | None:
    """What is wrong with `composite` (field name first), or None."""
    roles = COMPOSITE_ROLES[composite.kind]
    missing = [role for role in roles if role not in composite.bands]
    if missing:
        return f"bands: {composite.kind} needs {', '.join(roles)}; missing {', '.join(missing)}"
    unknown = sorted(set(composite.bands) - set(roles))
    if unknown:
        return f"bands: {', '.join(unknown)} is not a band of {composite.kind} ({', '.join(roles)})"
    named = [(file.url, file.filename) for file in files]
    for role in roles:
        # A URL's last segment is percent-decoded, so `%00` there could match a NUL name.
        if NUL in composite.bands[role]:
            return f"bands.{role}: {NUL_PROBLEM}"
        if match_band(composite.bands[role], named) is None:
            return (
                f"bands.{role}: {composite.bands[role]!r} is no file of the job (name it by its"
                " `filename` in `files` or by the last segment of its URL)"
            )
    if composite.bounds is not None:
        west, south, east, north = composite.bounds
        if not all(math.isfinite(value) for value in composite.bounds):
            return "bounds: every value must be a finite number"
        if not (-180 <= west < east <= 180):
            return "bounds: needs -180 <= west < east <= 180 (WGS84 longitude)"
        if not (-90 <= south < north <= 90):
            return "bounds: needs -90 <= south < north <= 90 (WGS84 latitude)"
    return None
