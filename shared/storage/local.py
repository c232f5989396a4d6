"""file:// storage: parts in a hidden folder, fsync, then an atomic rename into place."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import BinaryIO

import msgspec

from shared.storage import ObjectRefused, StorageError, read_open

_PARTS = ".parts"
# O_NOFOLLOW on each component, one at a time: a planted link anywhere on the way fails the
# open instead of leading outside the root. O_NONBLOCK: a planted FIFO must not hang the open.
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_OBJECT_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".meta")


def _open_in(folder: int, name: str, flags: int, key: str) -> int:
    """Open `name` inside the open `folder` without following a link; closes `folder`."""
    try:
        return os.open(name, flags, dir_fd=folder)
    except OSError as exc:
        if _is_link(folder, name):
            raise ObjectRefused(f"stored object {key!r} is behind a symbolic link") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise StorageError(f"no object {key!r}") from None
        raise StorageError(f"cannot open stored object {key!r}: {exc.strerror}") from None
    finally:
        os.close(folder)


def _is_link(folder: int, name: str) -> bool:
    try:
        return S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _checked(fd: int, key: str, expected_size: int | None) -> BinaryIO:
    """The open object as a file, once it is a regular file of the expected size."""
    try:
        info = os.fstat(fd)
        if S_ISDIR(info.st_mode):  # a folder is a key prefix, not an object
            raise StorageError(f"no object {key!r}")
        if not S_ISREG(info.st_mode):
            raise ObjectRefused(f"stored object {key!r} is not a regular file")
        # Catches a hard link planted in place of the object, unless it has the very same size.
        if expected_size is not None and info.st_size != expected_size:
            raise ObjectRefused(
                f"stored object {key!r} has {info.st_size} bytes, its record says {expected_size}"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "rb")


def _safe_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}")
    if path.parts[0] == _PARTS:
        raise StorageError(f"storage key {key!r} is reserved")
    return path


class LocalPart:
    """A part file under `<root>/.parts/`; writes go to the page cache, commit fsyncs."""

    def __init__(self, root: Path, path: Path, handle: BinaryIO, meta: dict[str, str]) -> None:
        self._root = root
        self._path = path
        self._handle = handle
        self._size = handle.tell()
        self._meta = meta

    @property
    def size(self) -> int:
        return self._size

    @property
    def meta(self) -> dict[str, str]:
        return dict(self._meta)

    async def save_meta(self, meta: dict[str, str], *, after_data: bool = False) -> None:
        if after_data:
            self._handle.flush()
            await asyncio.to_thread(os.fdatasync, self._handle.fileno())
        self._meta = dict(meta)
        # Replaced whole, never rewritten in place: a crash mid-save keeps the old record.
        path = _meta_path(self._path)
        staged = path.with_name("." + path.name)
        staged.write_bytes(msgspec.json.encode(self._meta))
        os.replace(staged, path)

    def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)
        self._size += len(chunk)

    async def allocate(self, size: int) -> None:
        self._handle.flush()
        os.ftruncate(self._handle.fileno(), size)
        self._handle.seek(size)
        self._size = size

    def write_at(self, offset: int, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            written = os.pwrite(self._handle.fileno(), view, offset)
            view, offset = view[written:], offset + written

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self._handle.fileno(), size, offset)

    async def existing(self) -> AsyncIterator[bytes]:
        self._handle.flush()
        with self._path.open("rb") as source:
            remaining = self._size
            while remaining > 0:
                chunk = await asyncio.to_thread(source.read, min(remaining, 1 << 22))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    async def truncate(self) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        self._size = 0

    async def commit(self, key: str) -> None:
        target = self._root / _safe_key(key)
        await asyncio.to_thread(self._commit, target)

    def _commit(self, target: Path) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, target)
        _meta_path(self._path).unlink(missing_ok=True)
        # The rename is durable only once its directory entry is.
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def abort(self) -> None:
        self._handle.close()
        self._path.unlink(missing_ok=True)
        _meta_path(self._path).unlink(missing_ok=True)

    async def close(self) -> None:
        self._handle.close()


class LocalStorage:
    """Objects as files under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        (self.root / _PARTS).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str) -> LocalStorage:
        path = url.removeprefix("file://")
        if not path:
            raise StorageError("DOWNLINK_STORAGE_URL: file:// needs a path, e.g. file://./data")
        return cls(Path(path))

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def _part_path(self, part_id: str) -> Path:
        if not part_id or "/" in part_id or part_id.startswith(".") or part_id.endswith(".meta"):
            raise StorageError(f"invalid part id {part_id!r}")
        return self.root / _PARTS / part_id

    async def open_part(self, part_id: str, *, resume: bool) -> LocalPart:
        path = self._part_path(part_id)
        meta: dict[str, str] = {}
        if resume:
            try:
                meta = msgspec.json.decode(_meta_path(path).read_bytes(), type=dict[str, str])
            except (FileNotFoundError, msgspec.DecodeError):
                meta = {}
        else:
            _meta_path(path).unlink(missing_ok=True)
        # Not O_APPEND, which would send every positioned write of a segment to the end.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if resume else os.O_TRUNC), 0o644)
        handle = os.fdopen(fd, "r+b")
        handle.seek(0, os.SEEK_END)
        return LocalPart(self.root, path, handle, meta)

    async def discard_part(self, part_id: str) -> None:
        path = self._part_path(part_id)
        path.unlink(missing_ok=True)
        _meta_path(path).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        _safe_key(key)  # a malformed key is an error, not a missing object
        try:
            await self.size(key)
        except StorageError:
            return False
        return True

    async def size(self, key: str) -> int:
        return await asyncio.to_thread(self._size, key)

    def _size(self, key: str) -> int:
        with self.open_verified(key) as source:
            return os.fstat(source.fileno()).st_size

    def open_verified(self, key: str, expected_size: int | None = None) -> BinaryIO:
        *folders, name = _safe_key(key).parts
        try:
            # The root was resolved at start; everything below it is walked without following.
            fd = os.open(self.root, _FOLDER_FLAGS)
        except OSError as exc:
            raise StorageError(f"storage root {self.root}: {exc.strerror}") from None
        for folder in folders:
            fd = _open_in(fd, folder, _FOLDER_FLAGS, key)
        return _checked(_open_in(fd, name, _OBJECT_FLAGS, key), key, expected_size)

    async def read(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        source = await asyncio.to_thread(self.open_verified, key)
        async for chunk in read_open(source, start, end, chunk_size):
            yield chunk

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        return self._path(key)

    def key_for_path(self, path: str) -> str | None:
        # Lexical only: a link on the way is refused when the object is opened.
        pure = PurePosixPath(path)
        if not pure.is_absolute() or not pure.is_relative_to(self.root):
            return None
        key = pure.relative_to(self.root).as_posix()
        try:
            _safe_key(key)
        except StorageError:
            return None
        return key
