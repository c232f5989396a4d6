"""The reconciler's DOWNLOADS kind: download commands rebuilt from the files they are for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.outbox import CommandKind, QueuedCommand, no_row_waiting, not_queued_within
from shared.events import ENCODER, DownloadFile
from shared.ids import FileId, JobId, UserId
from shared.streams import download_stream, lane_for

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg

# A command is rebuilt from the file and its job exactly as submit wrote it.
_DOWNLOAD_COLUMNS = (
    "f.id, f.job_id, f.url, f.requested_name, f.expected_sha256, j.user_id, j.priority"
)


async def _downloads_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[QueuedCommand]:
    """Pending files of unfinished jobs with no outbox row waiting, in file-id order."""
    rows = await connection.fetch(
        f"SELECT {_DOWNLOAD_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.status = 'pending' AND j.finished_at IS NULL"
        " AND ($1::uuid IS NULL OR f.id > $1)"
        f" AND {no_row_waiting('f.id::text')}"
        " ORDER BY f.id LIMIT $2",
        after,
        limit,
    )
    return [_queued_download(row) for row in rows]


async def _downloads_stale(
    connection: asyncpg.Connection, stale_s: float, limit: int
) -> list[QueuedCommand]:
    """Downloading files with no event for `stale_s` and not re-published within it either."""
    rows = await connection.fetch(
        f"SELECT {_DOWNLOAD_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.status = 'downloading' AND j.finished_at IS NULL"
        " AND f.updated_at < now() - make_interval(secs => $1)"
        f" AND {not_queued_within('f.id::text', '$1')}"
        " ORDER BY f.updated_at LIMIT $2",
        stale_s,
        limit,
    )
    return [_queued_download(row) for row in rows]


async def _downloads_open(connection: asyncpg.Connection, file_ids: Sequence[str]) -> set[str]:
    rows = await connection.fetch(
        "SELECT f.id FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE f.id = ANY($1::uuid[]) AND f.status IN ('pending', 'downloading')"
        " AND j.finished_at IS NULL FOR UPDATE OF f SKIP LOCKED",
        file_ids,
    )
    return {str(row["id"]) for row in rows}


def _queued_download(row: asyncpg.Record) -> QueuedCommand:
    command = DownloadFile(
        job_id=JobId(str(row["job_id"])),
        file_id=FileId(str(row["id"])),
        user_id=UserId(str(row["user_id"])),
        url=row["url"],
        filename=row["requested_name"],
        sha256=row["expected_sha256"],
        priority=row["priority"],
    )
    return QueuedCommand(
        subject_id=command.file_id,
        key=DOWNLOADS.key(command.file_id),
        stream=download_stream(lane_for(command.priority)),
        body=ENCODER.encode(command),
        file_id=command.file_id,
    )


# A download's key is its bare file id: the live markers already in Redis carry that name.
DOWNLOADS = CommandKind(
    name="download",
    key_prefix="",
    sent=_downloads_sent,
    still_open=_downloads_open,
    stale=_downloads_stale,
)
