"""File names from a URL or Content-Disposition: sanitised, and unique inside a job."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10))} | {
    f"LPT{i}" for i in range(1, 10)
}
_MAX_NAME_BYTES = 200
FALLBACK_NAME = "download"


def sanitize(name: str) -> str:
    """A name safe as one path segment on every filesystem we store to."""
    # A server may send a path; only its last segment can become a name.
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    # Windows reserves a device name before any extension: NUL.txt and NUL.tar.gz are NUL.
    if not name or name.split(".", 1)[0].strip().upper() in _WINDOWS_RESERVED:
        return FALLBACK_NAME if not name else _truncate(f"_{name}")
    return _truncate(name)


def _truncate(name: str) -> str:
    if len(name.encode()) <= _MAX_NAME_BYTES:
        return name
    suffix = PurePosixPath(name).suffix
    if len(suffix.encode()) > 20:
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    budget = _MAX_NAME_BYTES - len(suffix.encode())
    return stem.encode()[:budget].decode(errors="ignore") + suffix


def name_from_url(url: str) -> str:
    """The last path segment of `url`, percent-decoded."""
    path = urlsplit(url).path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) if path.strip("/") else ""


def choose_name(requested: str | None, disposition: str | None, url: str) -> str:
    """The user's name first, then the server's Content-Disposition, then the URL's."""
    for candidate in (requested, disposition, name_from_url(url)):
        if candidate and sanitize(candidate) != FALLBACK_NAME:
            return sanitize(candidate)
    return FALLBACK_NAME


def variants(name: str) -> Iterator[str]:
    """`name`, then `stem_1.ext`, `stem_2.ext`, ...: candidates when a name is taken.

    Lazy: almost every file takes its first candidate, and each costs an encode and a slice.
    """
    path = PurePosixPath(name)
    suffix = "".join(path.suffixes[-2:]) if path.suffixes[-1:] == [".gz"] else path.suffix
    if len(suffix.encode()) > 20:
        suffix = ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    yield name
    for number in range(1, 10_000):
        yield _numbered(stem, number, suffix)


def _numbered(stem: str, number: int, suffix: str) -> str:
    # Cut the stem, never the number: a name at the length limit still gets distinct variants.
    tail = f"_{number}{suffix}"
    return stem.encode()[: _MAX_NAME_BYTES - len(tail.encode())].decode(errors="ignore") + tail
