"""Where file bytes live: the `Storage` port and `open_storage(url)`, which picks a backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from pathlib import Path


class StorageError(Exception):
    """A storage operation failed, or a key is malformed."""


class ObjectRefused(StorageError):
    """Something is stored under a key, but not what this store wrote there: it sits behind a
    symbolic link, is not a regular file, or has another size than its record says."""


class PartWriter(Protocol):
    """An unfinished object being written; invisible under its final key until `commit`."""

    @property
    def size(self) -> int:
        """Bytes in the part so far (those kept from an earlier attempt included)."""
        ...

    @property
    def meta(self) -> dict[str, str]:
        """What the writer recorded about the part's source (e.g. its ETag), kept with it."""
        ...

    async def save_meta(self, meta: dict[str, str], *, after_data: bool = False) -> None:
        """Record `meta`; with `after_data`, only once the bytes written so far are on disk, for
        a record of progress that must survive a power loss."""
        ...

    def write(self, chunk: bytes) -> None:
        """Append `chunk` (blocking: call it from a worker thread for big chunks)."""
        ...

    async def allocate(self, size: int) -> None:
        """Make the part `size` bytes long, for `write_at` to fill in any order."""
        ...

    def write_at(self, offset: int, chunk: bytes) -> None:
        """Write `chunk` at `offset`, inside the `allocate`d length; blocking, safe from several
        threads at once. A part is written either by `write` or by `write_at`, never by both.
        """
        ...

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset` of what was written; blocking."""
        ...

    def existing(self) -> AsyncIterator[bytes]:
        """The bytes kept from an earlier attempt, to rebuild a hash over them."""
        ...

    async def truncate(self) -> None:
        """Throw the kept bytes away and start from zero."""
        ...

    async def commit(self, key: str) -> None:
        """Make the bytes durable and visible under `key`, atomically."""
        ...

    async def abort(self) -> None:
        """Remove the part."""
        ...

    async def close(self) -> None:
        """Stop writing but keep the part, so a later attempt can resume it."""
        ...


class Storage(Protocol):
    """Objects addressed by slash-separated keys, e.g. `user/job/file.tif`."""

    async def open_part(self, part_id: str, *, resume: bool) -> PartWriter:
        """Open the part `part_id`, keeping its earlier bytes when `resume` is true."""
        ...

    async def discard_part(self, part_id: str) -> None: ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int: ...

    def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """Bytes `start` to `end` (exclusive) of `key`."""
        ...

    def open_verified(self, key: str, expected_size: int | None = None) -> BinaryIO:
        """Open `key` for reading, only if it is an object this store wrote, of `expected_size`
        bytes when that is given.

        The one check every reader of a recorded object goes through: ObjectRefused when the
        object is behind a symbolic link, not a regular file or of another size, StorageError
        when it is missing. The open file reads the checked bytes even if the key is replaced
        meanwhile. Blocking: call it from a worker thread.
        """
        ...

    async def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """The file behind `key` when the backend is a local folder, else None."""
        ...

    def key_for_path(self, path: str) -> str | None:
        """The key an absolute local file `path` names, or None when the path is not inside
        this store (always None for a backend that is not a local folder)."""
        ...


async def read_open(
    source: BinaryIO, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20
) -> AsyncIterator[bytes]:
    """Bytes `start` to `end` (exclusive, None: to the end) of a file `open_verified` returned,
    read in worker threads, so a file is never held in memory whole; closes it afterwards."""
    with source:
        await asyncio.to_thread(source.seek, start)
        remaining = end - start if end is not None else None
        while remaining is None or remaining > 0:
            want = chunk_size if remaining is None else min(chunk_size, remaining)
            chunk = await asyncio.to_thread(source.read, want)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def open_storage(url: str) -> Storage:
    """The backend for `url`: `file://./data` (relative or absolute); S3 arrives later."""
    if url.startswith("file://"):
        from shared.storage.local import LocalStorage

        return LocalStorage.from_url(url)
    raise StorageError(f"DOWNLINK_STORAGE_URL: unsupported storage {url!r} (file:// is)")
