"""What a file is, from its first bytes: the magic numbers of the formats Downlink meets."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Final, NamedTuple

_HEAD_BYTES = 4096


class FileType(NamedTuple):
    """A detected format: a short name (`tiff`, `jpeg`, `text`, ...) and its media type."""

    kind: str
    content_type: str


# Longest or most specific first: the first prefix that matches wins.
_MAGIC: Final[tuple[tuple[bytes, FileType], ...]] = (
    (b"II*\x00", FileType("tiff", "image/tiff")),
    (b"MM\x00*", FileType("tiff", "image/tiff")),
    (b"II+\x00", FileType("tiff", "image/tiff")),  # BigTIFF
    (b"MM\x00+", FileType("tiff", "image/tiff")),
    (b"\x89PNG\r\n\x1a\n", FileType("png", "image/png")),
    (b"\xff\xd8\xff", FileType("jpeg", "image/jpeg")),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", FileType("jp2", "image/jp2")),
    (b"\xffO\xffQ", FileType("jp2", "image/j2c")),  # raw JPEG 2000 codestream
    (b"GIF87a", FileType("gif", "image/gif")),
    (b"GIF89a", FileType("gif", "image/gif")),
    (b"\x89HDF\r\n\x1a\n", FileType("hdf5", "application/x-hdf5")),
    (b"\x0e\x03\x13\x01", FileType("hdf4", "application/x-hdf")),
    (b"CDF\x01", FileType("netcdf", "application/x-netcdf")),
    (b"CDF\x02", FileType("netcdf", "application/x-netcdf")),
    (b"PK\x03\x04", FileType("zip", "application/zip")),
    (b"\x1f\x8b", FileType("gzip", "application/gzip")),
    (b"%PDF-", FileType("pdf", "application/pdf")),
    (b"BM", FileType("bmp", "image/bmp")),
)

# Formats Pillow reads as pictures (metadata: size, mode, EXIF; thumbnails through Pillow).
PICTURE_KINDS: Final = frozenset({"jpeg", "png", "gif", "webp", "bmp"})
# Formats worth opening with GDAL; anything else is never handed to it.
RASTER_KINDS: Final = frozenset({"tiff", "jp2", "hdf5", "hdf4", "netcdf"})


def sniff(path: Path) -> FileType:
    """The type of the file at `path`, from its content (its name is only a last hint)."""
    with path.open("rb") as source:
        head = source.read(_HEAD_BYTES)
    for magic, found in _MAGIC:
        if head.startswith(magic):
            return found
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return FileType("webp", "image/webp")
    if not head:
        return FileType("empty", "application/octet-stream")
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A multi-byte character cut at the end of the head is still text.
            text = "" if exc.start < len(head) - 3 else head[: exc.start].decode("utf-8")
        if text:
            stripped = text.lstrip()
            if stripped.startswith(("{", "[")):
                return FileType("json", "application/json")
            if stripped.startswith("<"):
                return FileType("xml", "application/xml")
            return FileType("text", "text/plain")
    guessed, _ = mimetypes.guess_type(path.name)
    return FileType("binary", guessed or "application/octet-stream")
