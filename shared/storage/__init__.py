"""Where file bytes live: the `Storage` port and `open_storage(url)`, which picks a backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pathlib import Path


class StorageError(Exception):
    """A storage operation failed, or a key is malformed."""


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

    async def save_meta(self, meta: dict[str, str]) -> None: ...

    def write(self, chunk: bytes) -> None: ...

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

    async def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """The file behind `key` when the backend is a local folder, else None."""
        ...


def open_storage(url: str) -> Storage:
    """The backend for `url`: `file://./data` (relative or absolute); S3 arrives later."""
    if url.startswith("file://"):
        from shared.storage.local import LocalStorage

        return LocalStorage.from_url(url)
    raise StorageError(f"DOWNLINK_STORAGE_URL: unsupported storage {url!r} (file:// is)")
