"""Streaming zip and tar.gz writers: sources are read in chunks and the archive leaves as it grows.

Synchronous on purpose: compression is CPU work, so the exporter runs `write_archive` in a worker
thread and the event loop stays free. No source is ever held whole in memory; each is hashed
while it is copied, so an archive never carries bytes that differ from what the manifest says.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

CHUNK_BYTES = 1 << 20
GZIP_LEVEL = 6  # what `gzip` and `tar czf` use: level 9 costs twice the CPU for ~1 % smaller
# Formats that are compressed already: deflating them again costs CPU and saves nothing.
STORED_SUFFIXES = frozenset(
    {
        ".tif", ".tiff", ".jp2", ".j2k", ".png", ".jpg", ".jpeg", ".webp", ".gif",
        ".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".nc", ".h5", ".laz",
    }
)  # fmt: skip
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry

ArchiveFormat = Literal["zip", "tar.gz"]


class ArchiveAborted(Exception):
    """The build was asked to stop (the export was cancelled or the service is stopping)."""


class SourceMismatch(Exception):
    """A source's bytes are not the ones the command described (size or SHA-256)."""


@dataclass(frozen=True, slots=True)
class Member:
    """One source to put in the archive.

    Attributes:
        arcname: its path inside the archive.
        size: the bytes it must have.
        sha256: the hex digest it must have, or "" when unknown (computed while copying).
        open: opens the source for reading; called in the writer's thread.
    """

    arcname: str
    size: int
    sha256: str
    open: Callable[[], BinaryIO]


@dataclass(frozen=True, slots=True)
class Written:
    """A member as it went into the archive: its verified size and digest."""

    arcname: str
    size: int
    sha256: str


@dataclass(slots=True)
class Progress:
    """Counters the writer thread advances and the event loop reads (ints: no lock needed)."""

    files_done: int = 0
    bytes_done: int = 0


class Sink(Protocol):
    """Where archive bytes go (a storage part); written from the writer's thread."""

    def write(self, chunk: bytes) -> None: ...


@dataclass
class HashingSink:
    """Passes archive bytes on to `target` while counting and hashing them.

    It has no `tell` or `seek`, so zipfile writes a streamable archive (data descriptors after
    each entry) instead of seeking back to patch headers, which a storage part cannot do.
    """

    target: Sink | None
    size: int = 0
    _digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.target is None:
            return len(data)  # detached: the archive is being thrown away
        chunk = data if isinstance(data, bytes) else bytes(data)
        self.target.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        """Nothing is buffered here; zipfile and gzip call it anyway."""

    def close(self) -> None:
        """The target's owner closes it (commit or abort); zipfile may call this."""

    def detach(self) -> None:
        """Drop every later write: nothing more reaches the target."""
        self.target = None

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def stored_in_zip(arcname: str) -> bool:
    """Whether `arcname` is kept as is in a zip (already compressed) rather than deflated."""
    return PurePosixPath(arcname.lower()).suffix in STORED_SUFFIXES


def write_archive(
    sink: HashingSink,
    archive_format: ArchiveFormat,
    members: Sequence[Member],
    *,
    metadata: Callable[[list[Written]], list[tuple[str, bytes]]] | None = None,
    progress: Progress | None = None,
    abort: threading.Event | None = None,
    mtime: float | None = None,
) -> list[Written]:
    """Write `members`, then the files `metadata` makes of what was written, into `sink`.

    Raises ArchiveAborted once `abort` is set, SourceMismatch when a source is not what its
    member says, and whatever opening a source raises. On an error the sink holds a partial
    archive: the caller throws it away.
    """
    progress = progress if progress is not None else Progress()
    abort = abort if abort is not None else threading.Event()
    mtime = time.time() if mtime is None else mtime
    writer = _ZipWriter(sink, mtime) if archive_format == "zip" else _TarGzWriter(sink, mtime)
    written: list[Written] = []
    try:
        for member in members:
            if abort.is_set():
                raise ArchiveAborted("export cancelled")
            with member.open() as source:
                reader = _VerifyingReader(source, member, progress, abort)
                writer.add(member.arcname, member.size, reader)
                written.append(reader.finish())
            progress.files_done += 1
        if metadata is not None:
            for arcname, data in metadata(written):
                if abort.is_set():
                    raise ArchiveAborted("export cancelled")
                writer.add_bytes(arcname, data)
        writer.close()
    except BaseException:
        # zipfile and gzip finish their streams when garbage-collected; a failed archive must
        # not get an end written into a part that is being thrown away.
        sink.detach()
        raise
    return written


# --- sources --------------------------------------------------------------------------------


class _VerifyingReader:
    """Reads a source for the writer, hashing and counting it and honouring the abort flag."""

    def __init__(
        self, source: BinaryIO, member: Member, progress: Progress, abort: threading.Event
    ) -> None:
        self._source = source
        self._member = member
        self._progress = progress
        self._abort = abort
        self._digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if self._abort.is_set():
            raise ArchiveAborted("export cancelled")
        data = self._source.read(size)
        self._digest.update(data)
        self.count += len(data)
        self._progress.bytes_done += len(data)
        return data

    def finish(self) -> Written:
        """The member as written; raises SourceMismatch unless it is exactly what was promised."""
        member = self._member
        # tarfile stops reading at the declared size: a source that grew must be noticed too.
        if self.count > member.size or (self.count == member.size and self._source.read(1)):
            raise SourceMismatch(f"{member.arcname}: the source has more than {member.size} bytes")
        if self.count != member.size:
            raise SourceMismatch(
                f"{member.arcname}: the source has {self.count} bytes, expected {member.size}"
            )
        digest = self._digest.hexdigest()
        if member.sha256 and digest != member.sha256.lower():
            raise SourceMismatch(
                f"{member.arcname}: SHA-256 {digest} does not match the recorded {member.sha256}"
            )
        return Written(member.arcname, member.size, digest)


def chunks_reader(chunks: Iterator[bytes]) -> BinaryIO:
    """A buffered file over an iterator of chunks, whose read(n) returns n bytes until the end."""
    return io.BufferedReader(_ChunkStream(chunks), buffer_size=CHUNK_BYTES)


class _ChunkStream(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        super().close()


# --- formats --------------------------------------------------------------------------------


class _Writer(Protocol):
    def add(self, arcname: str, size: int, source: _VerifyingReader) -> None: ...

    def add_bytes(self, arcname: str, data: bytes) -> None: ...

    def close(self) -> None: ...


class _ZipWriter:
    """Zip with data descriptors; ZIP64 records wherever a size or an offset needs them."""

    def __init__(self, sink: HashingSink, mtime: float) -> None:
        self._zip = zipfile.ZipFile(
            sink,
            mode="w",
            compression=zipfile.ZIP_DEFLATED,
            allowZip64=True,
        )
        self._date_time = max(_ZIP_EPOCH, time.localtime(mtime)[:6])

    def _info(self, arcname: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(arcname, date_time=self._date_time)
        info.compress_type = zipfile.ZIP_STORED if stored_in_zip(arcname) else zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        # Known up front, so zipfile writes ZIP64 fields for an entry that needs them
        # (over 4 GiB) and only for those.
        info.file_size = size
        return info

    def add(self, arcname: str, size: int, source: _VerifyingReader) -> None:
        with self._zip.open(self._info(arcname, size), mode="w") as target:
            while chunk := source.read(CHUNK_BYTES):
                target.write(chunk)

    def add_bytes(self, arcname: str, data: bytes) -> None:
        with self._zip.open(self._info(arcname, len(data)), mode="w") as target:
            target.write(data)

    def close(self) -> None:
        self._zip.close()


class _TarGzWriter:
    """POSIX (pax) tar streamed through gzip; pax carries long names and sizes over 8 GiB."""

    def __init__(self, sink: HashingSink, mtime: float) -> None:
        self._mtime = int(mtime)
        # GzipFile writes its header, the deflate stream and its trailer without seeking.
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=sink, mtime=self._mtime
        )
        self._tar = tarfile.TarFile(
            fileobj=self._gzip,
            mode="w",
            format=tarfile.PAX_FORMAT,
            copybufsize=CHUNK_BYTES,
        )

    def _info(self, arcname: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(arcname)
        info.size = size
        info.mtime = self._mtime
        info.mode = 0o644
        info.type = tarfile.REGTYPE
        return info

    def add(self, arcname: str, size: int, source: _VerifyingReader) -> None:
        try:
            self._tar.addfile(self._info(arcname, size), source)
        except OSError as exc:
            if source.count < size:  # tarfile's word for a source that ended early
                raise SourceMismatch(
                    f"{arcname}: the source has {source.count} bytes, expected {size}"
                ) from exc
            raise

    def add_bytes(self, arcname: str, data: bytes) -> None:
        self._tar.addfile(self._info(arcname, len(data)), io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        self._gzip.close()
