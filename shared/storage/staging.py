"""Moving bytes between storage and the local disk that GDAL and the pool workers read and write.

GDAL needs a file path. With local storage the stored file is read in place; any other backend
gets a scratch copy first. Outputs are written to scratch, then streamed into storage under
their key, hashed on the way, and committed atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.storage import StorageError

if TYPE_CHECKING:
    from shared.storage import Storage

log = logging.getLogger(__name__)

_CHUNK_BYTES = 4 << 20
_SCRATCH_PREFIX = "downlink-processor-"
_SCRATCH_NAME = re.compile(rf"^{_SCRATCH_PREFIX}(\d+)-")


class SourceMissing(Exception):
    """The file to process is not in storage (deleted, or retention removed it)."""


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    """An output committed to storage."""

    key: str
    size: int
    sha256: str


class Staging:
    """Scratch space of one processor process, and the copies in and out of storage."""

    def __init__(self, storage: Storage, scratch_root: Path) -> None:
        self.storage = storage
        self.scratch_root = scratch_root

    @classmethod
    def create(cls, storage: Storage, parent: Path | None = None) -> Staging:
        """A fresh scratch folder named after this pid; folders of dead processes are removed."""
        base = parent or Path(tempfile.gettempdir())
        _sweep_dead(base)
        root = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=base))
        return cls(storage, root)

    def close(self) -> None:
        shutil.rmtree(self.scratch_root, ignore_errors=True)

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A scratch folder for one message, removed afterwards."""
        path = Path(tempfile.mkdtemp(dir=self.scratch_root))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.asynccontextmanager
    async def source(self, key: str, workdir: Path) -> AsyncIterator[Path]:
        """A local path holding the bytes of `key`: the file itself when storage is local."""
        local = self.storage.local_path(key)
        if local is not None:
            if not local.is_file():
                raise SourceMissing(f"{key} is no longer in storage")
            yield local
            return
        copy = workdir / ("source-" + key.rsplit("/", 1)[-1])
        try:
            with copy.open("wb") as target:
                async for chunk in self.storage.read(key, chunk_size=_CHUNK_BYTES):
                    await asyncio.to_thread(target.write, chunk)
        except StorageError as exc:
            raise SourceMissing(f"{key} is no longer in storage: {exc}") from None
        try:
            yield copy
        finally:
            copy.unlink(missing_ok=True)

    async def store(self, path: Path, key: str, part_id: str) -> StoredArtifact:
        """Stream `path` into storage under `key`; the part is discarded if anything fails."""
        digest = hashlib.sha256()
        size = 0
        part = await self.storage.open_part(part_id, resume=False)
        try:
            with path.open("rb") as source:
                while chunk := await asyncio.to_thread(source.read, _CHUNK_BYTES):
                    digest.update(chunk)
                    part.write(chunk)
                    size += len(chunk)
            await part.commit(key)
        except BaseException:
            await part.abort()
            raise
        return StoredArtifact(key=key, size=size, sha256=digest.hexdigest())


def _sweep_dead(base: Path) -> None:
    # A SIGKILLed processor leaves its scratch folder behind; its pid says whether it lives.
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            match = _SCRATCH_NAME.match(entry.name)
            if match and entry.is_dir() and not _alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                log.info("removed scratch folder of dead process", extra={"path": str(entry)})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
