"""File types from content, not names."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from services.processor.sniff import FileType, sniff

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"II*\x00\x08\x00", FileType("tiff", "image/tiff")),
        (b"MM\x00*\x00\x00", FileType("tiff", "image/tiff")),
        (b"II+\x00\x08\x00", FileType("tiff", "image/tiff")),
        (b"\x89PNG\r\n\x1a\n....", FileType("png", "image/png")),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", FileType("jpeg", "image/jpeg")),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", FileType("jp2", "image/jp2")),
        (b"\x89HDF\r\n\x1a\n", FileType("hdf5", "application/x-hdf5")),
        (b"PK\x03\x04rest", FileType("zip", "application/zip")),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", FileType("webp", "image/webp")),
        (b'  {"type": "FeatureCollection"}', FileType("json", "application/json")),
        (b"plain words\n", FileType("text", "text/plain")),
        ("caf\u00e9 ".encode() * 2000, FileType("text", "text/plain")),
        (b"", FileType("empty", "application/octet-stream")),
        (b"\x00\x01\x02\x03binary", FileType("binary", "application/octet-stream")),
    ],
)
def test_sniff(tmp_path: Path, head: bytes, expected: FileType) -> None:
    path = tmp_path / "scene.bin"
    path.write_bytes(head)

    assert sniff(path) == expected


def test_the_name_is_only_a_last_hint(tmp_path: Path) -> None:
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(b"\x00\xff" * 10)  # neither magic nor text

    assert sniff(path) == FileType("binary", "application/x-tar")
