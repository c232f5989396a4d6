"""How jobs, files and exports move: stored in PostgreSQL, carried by events, shown by the API."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job stands; the last four are final."""

    PENDING = "pending"  # accepted, no file started yet
    IN_PROGRESS = "in_progress"  # at least one file started or ended
    COMPLETED = "completed"  # every file stored
    PARTIAL = "partial"  # some files stored, the others failed
    FAILED = "failed"  # no file stored
    CANCELLED = "cancelled"  # stopped by its owner; stays so whatever arrives later


class FileStatus(StrEnum):
    """Where one file stands; state only moves forward along this order."""

    PENDING = "pending"  # its DownloadFile command is queued
    DOWNLOADING = "downloading"  # a downloader is fetching it
    COMPLETED = "completed"  # its bytes are in storage (final)
    FAILED = "failed"  # ended without bytes (final)
    CANCELLED = "cancelled"  # its job was cancelled first (final)


FINAL_JOB_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED}
)
FINAL_FILE_STATUSES = frozenset({FileStatus.COMPLETED, FileStatus.FAILED, FileStatus.CANCELLED})


class ExportStatus(StrEnum):
    """Where an export stands; the last three are final."""

    PENDING = "pending"  # its BuildExport command is queued
    BUILDING = "building"  # an exporter is writing the archive
    READY = "ready"  # the archive is in storage and can be downloaded (final)
    FAILED = "failed"  # the archive could not be built; `error` says why (final)
    CANCELLED = "cancelled"  # stopped by its owner; stays so whatever arrives later (final)
