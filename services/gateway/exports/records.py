"""Exports as the record knows them: a resolved selection, an export row, a ready archive."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from shared.events import ExportItem
from shared.ids import JobId
from shared.statuses import ExportStatus
from shared.storage.keys import ARCHIVE_EXTENSIONS


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    """The resolved content of an export: its items and the jobs they come from."""

    items: tuple[ExportItem, ...]
    jobs: tuple[dict[str, Any], ...]

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.items)


class CreatedExport(msgspec.Struct, frozen=True, kw_only=True):
    """An export just written, with what it holds."""

    export_id: str
    file_count: int
    total_bytes: int


class ExportRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One export row; `size` and `sha256` are the archive's once it is ready."""

    export_id: str
    status: ExportStatus
    format: Literal["zip", "tar.gz"]
    include_metadata: bool
    file_count: int
    total_bytes: int
    files_done: int
    bytes_done: int
    size: int | None
    sha256: str | None
    error: str | None
    job_id: JobId | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class StoredArchive(msgspec.Struct, frozen=True, kw_only=True):
    """A ready export, as needed to serve its bytes."""

    export_id: str
    filepath: str
    sha256: str | None
    format: str

    @property
    def filename(self) -> str:
        return f"export-{self.export_id}.{ARCHIVE_EXTENSIONS.get(self.format, 'bin')}"
