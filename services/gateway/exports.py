"""Exports on the gateway side: what a user may export, the exports SQL, and their projection.

The gateway resolves a selection (jobs, file ids, file paths) into the user's stored files and
their artifacts, refuses anything outside the user's own area, and writes the export row and its
BuildExport command (outbox) in one transaction. The tracker projects the exporter's events here;
EXPORTS is the reconciler's command kind for the builds Redis lost.

GatewayError (services.gateway.errors)
├── NotFound              404
│   └── ExportNotFound        missing, or another user's
├── PathRefused           403  an absolute path outside the user's area, a symbolic link,
│                              or a stored file not of its recorded size
├── NotExportable         409  a file without stored bytes, or an empty selection
├── ExportNotReady        409  the archive is not built (yet)
├── ExportAlreadyEnded    409  cancel of an export that is ready, failed or cancelled
└── ExportTooLarge        413  over DOWNLINK_MAX_EXPORT_SIZE or the item limit
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from services.gateway import repository
from services.gateway.errors import GatewayError, InvalidRequest, JobNotFound, NotFound
from services.gateway.relay import trace_headers
from services.gateway.schemas import ExportProgressView, ExportStatus, ExportStatusResponse
from services.gateway.statuses import JobStatus
from shared.events import ENCODER, BuildExport, ExportFailed, ExportItem, ExportProgress
from shared.ids import JobId, UserId
from shared.storage import ObjectRefused, StorageError
from shared.streams import EXPORT_CANCEL_CHANNEL, EXPORT_STREAM, export_cancelled_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg
    from redis.asyncio import Redis

    from shared.events import ExportFormat, ExportReady
    from shared.storage import Storage

log = logging.getLogger(__name__)

# One command carries every item: past this many the message (and the manifest) gets unwieldy.
MAX_EXPORT_ITEMS = 100_000
MEDIA_TYPES = {"zip": "application/zip", "tar.gz": "application/gzip"}
EXTENSIONS = {"zip": "zip", "tar.gz": "tar.gz"}


OPEN_EXPORT_STATUSES = (ExportStatus.PENDING, ExportStatus.BUILDING)


# --- errors ---------------------------------------------------------------------------------


class ExportNotFound(NotFound):
    def __init__(self, export_id: str) -> None:
        super().__init__(f"export {export_id} not found")


class PathRefused(GatewayError):
    """A path that points outside the caller's own files; the message names it."""

    status_code = 403


class NotExportable(GatewayError):
    """Something in the selection has no stored bytes, or nothing in it has."""

    status_code = 409


class ExportNotReady(GatewayError):
    status_code = 409

    def __init__(self, export_id: str, status: str) -> None:
        super().__init__(
            f"export {export_id} is {status}; its archive can be downloaded once ready"
        )


class ExportAlreadyEnded(GatewayError):
    status_code = 409

    def __init__(self, export_id: str, status: str) -> None:
        super().__init__(f"export {export_id} already ended: {status}")


class ExportTooLarge(GatewayError):
    status_code = 413


# --- records --------------------------------------------------------------------------------


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    """The resolved content of an export: its items and the jobs they come from."""

    items: tuple[ExportItem, ...]
    jobs: tuple[dict[str, Any], ...]

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.items)


class StoredArchive(msgspec.Struct, frozen=True, kw_only=True):
    """A ready export, as needed to serve its bytes."""

    export_id: str
    filepath: str
    sha256: str | None
    format: str

    @property
    def filename(self) -> str:
        return f"export-{self.export_id}.{EXTENSIONS.get(self.format, 'bin')}"


class CreatedExport(msgspec.Struct, frozen=True, kw_only=True):
    """An export just written, with what it holds."""

    export_id: str
    file_count: int
    total_bytes: int


def download_url(export_id: str) -> str:
    return f"/api/v1/downloads/exports/{export_id}/download"


# --- the HTTP side --------------------------------------------------------------------------


class ExportRepository:
    """Exports as the API reads and writes them; every query is scoped to one user."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self,
        user_id: UserId,
        *,
        job_ids: Sequence[uuid.UUID],
        file_ids: Sequence[uuid.UUID],
        file_paths: Sequence[str],
        export_format: ExportFormat,
        include_metadata: bool,
        storage: Storage,
        max_bytes: int,
    ) -> CreatedExport:
        """Check and resolve the selection, then write the export and its command."""
        keys = await paths_to_keys(user_id, file_paths, storage)
        async with self._pool.acquire() as connection, connection.transaction():
            selection = await resolve_selection(
                connection, user_id, job_ids=job_ids, file_ids=file_ids, file_paths=keys
            )
            await refuse_tampered(selection, storage)
            if not selection.items:
                raise NotExportable(
                    "job_ids, file_ids, file_paths: no stored file in the selection to export"
                )
            if len(selection.items) > MAX_EXPORT_ITEMS:
                raise ExportTooLarge(
                    f"the selection holds {len(selection.items)} files and artifacts; "
                    f"an export takes at most {MAX_EXPORT_ITEMS}"
                )
            if selection.total_bytes > max_bytes:
                raise ExportTooLarge(
                    f"the selection holds {selection.total_bytes} bytes in "
                    f"{len(selection.items)} files, over the export size limit of {max_bytes} "
                    "bytes (DOWNLINK_MAX_EXPORT_SIZE); export fewer files at a time"
                )
            export_id = await insert_export(
                connection,
                user_id=user_id,
                job_id=None,
                export_format=export_format,
                include_metadata=include_metadata,
                selection=selection,
            )
        return CreatedExport(
            export_id=export_id,
            file_count=len(selection.items),
            total_bytes=selection.total_bytes,
        )

    async def status(self, user_id: UserId, export_id: str) -> ExportStatusResponse:
        row = await self._pool.fetchrow(
            "SELECT * FROM exports WHERE id = $1 AND user_id = $2", export_id, user_id
        )
        if row is None:
            raise ExportNotFound(export_id)
        return _status(row)

    async def archive(self, user_id: UserId, export_id: str) -> StoredArchive:
        """The ready archive of the export; ExportNotReady while it is not."""
        row = await self._pool.fetchrow(
            "SELECT id, status, filepath, sha256, format FROM exports"
            " WHERE id = $1 AND user_id = $2",
            export_id,
            user_id,
        )
        if row is None:
            raise ExportNotFound(export_id)
        if row["status"] != ExportStatus.READY or row["filepath"] is None:
            raise ExportNotReady(export_id, row["status"])
        return StoredArchive(
            export_id=str(row["id"]),
            filepath=row["filepath"],
            sha256=row["sha256"],
            format=row["format"],
        )

    async def cancel(self, user_id: UserId, export_id: str, *, reason: str | None) -> None:
        """Mark an unfinished export cancelled; ExportAlreadyEnded once it ended."""
        async with self._pool.acquire() as connection, connection.transaction():
            status = await connection.fetchval(
                "SELECT status FROM exports WHERE id = $1 AND user_id = $2 FOR UPDATE",
                export_id,
                user_id,
            )
            if status is None:
                raise ExportNotFound(export_id)
            if status not in OPEN_EXPORT_STATUSES:
                raise ExportAlreadyEnded(export_id, status)
            await connection.execute(
                "UPDATE exports SET status = 'cancelled', error = $2, finished_at = now(),"
                " updated_at = now() WHERE id = $1",
                export_id,
                reason or "cancelled by the user",
            )


async def announce_export_cancel(redis: Redis, export_id: str, *, ttl_s: int) -> bool:
    """Set the export's cancelled flag and publish its id, so exporters abort and skip it.

    PostgreSQL already records the cancellation and the tracker ignores a later ExportReady,
    so a Redis failure only means an archive is built to no effect: logged, not raised.
    """
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(export_cancelled_key(export_id), b"1", ex=ttl_s)
            pipe.publish(EXPORT_CANCEL_CHANNEL, export_id)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning(
            "export %s cancelled, but Redis could not be told: %s",
            export_id,
            exc,
            extra={"export_id": export_id},
        )
        return False
    return True


def _status(row: asyncpg.Record) -> ExportStatusResponse:
    total = row["total_bytes"]
    ready = row["status"] == ExportStatus.READY
    done = total if ready else min(row["bytes_done"], total)
    return ExportStatusResponse(
        export_id=str(row["id"]),
        status=ExportStatus(row["status"]),
        format=row["format"],
        include_metadata=row["include_metadata"],
        file_count=row["file_count"],
        total_bytes=total,
        progress=ExportProgressView(
            files_done=row["file_count"] if ready else min(row["files_done"], row["file_count"]),
            bytes_done=done,
            percentage=round(100.0 * done / total, 1) if total else (100.0 if ready else 0.0),
        ),
        size=row["size"],
        hash=row["sha256"],
        download_url=download_url(str(row["id"])) if ready else None,
        error=row["error"],
        job_id=str(row["job_id"]) if row["job_id"] else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


# --- the selection --------------------------------------------------------------------------


async def paths_to_keys(user_id: UserId, paths: Sequence[str], storage: Storage) -> list[str]:
    """The storage keys `file_paths` name, each checked to stay inside the caller's own area.

    `..` and `.` segments are refused (400); an absolute path is accepted only inside the
    caller's folder of local storage, anything else absolute is refused (403); a symbolic link
    on the way is refused (403); a key in another user's area answers 404, as their ids do.
    """
    keys: list[str] = []
    for index, path in enumerate(paths):
        field = f"file_paths[{index}]"
        if not path or "\x00" in path or "\\" in path:
            raise InvalidRequest(f"{field}: not a file path: {path!r}")
        segments = path.split("/")
        if any(segment in ("..", ".") for segment in segments):
            raise InvalidRequest(f"{field}: '..' and '.' are not allowed in a file path")
        if path.startswith("/"):
            key = storage.key_for_path(path)
            if key is None or not key.startswith(f"{user_id}/"):
                raise PathRefused(f"{field}: {path!r} is outside your storage area")
        else:
            key = path
        if "" in key.split("/"):
            raise InvalidRequest(f"{field}: empty segments are not allowed in a file path")
        if not key.startswith(f"{user_id}/"):
            raise NotFound(f"{field}: {path!r} is not one of your files")
        keys.append(key)
    refused = await asyncio.to_thread(_first_refused, storage, [(key, None) for key in keys])
    if refused is not None:
        index, error = refused
        raise PathRefused(f"file_paths[{index}]: {paths[index]!r} refused: {error}")
    return keys


async def refuse_tampered(selection: Selection, storage: Storage) -> None:
    """PathRefused when a selected file is not what storage wrote and the record describes.

    Storage never writes links: one found there (or a hard link, found by its size) was
    planted to reach outside the user's area.
    """
    objects = [(item.filepath, item.size) for item in selection.items]
    refused = await asyncio.to_thread(_first_refused, storage, objects)
    if refused is not None:
        raise PathRefused(f"{refused[1]}; refused")


def _first_refused(
    storage: Storage, objects: Sequence[tuple[str, int | None]]
) -> tuple[int, ObjectRefused] | None:
    """The index of the first (key, size) storage's one check refuses, with its reason.

    A missing object is no refusal: the selection answers 404 for it, or the exporter fails.
    """
    for index, (key, size) in enumerate(objects):
        try:
            storage.open_verified(key, size).close()
        except ObjectRefused as exc:
            return index, exc
        except StorageError:
            continue
    return None


async def resolve_selection(
    connection: asyncpg.Connection,
    user_id: UserId,
    *,
    job_ids: Sequence[uuid.UUID | str] = (),
    file_ids: Sequence[uuid.UUID | str] = (),
    file_paths: Sequence[str] = (),
) -> Selection:
    """The caller's stored files (and their artifacts) the selection names, with arcnames.

    Every job and file id must be the caller's (404 otherwise, as everywhere); a file named
    explicitly must be stored (409); a job contributes the files it has stored.
    """
    job_list = list(dict.fromkeys(str(j) for j in job_ids))
    id_list = list(dict.fromkeys(str(f) for f in file_ids))
    path_list = list(dict.fromkeys(file_paths))
    if job_list:
        found = {
            str(r["id"])
            for r in await connection.fetch(
                "SELECT id FROM jobs WHERE user_id = $1 AND id = ANY($2::uuid[])",
                user_id,
                job_list,
            )
        }
        for job_id in job_list:
            if job_id not in found:
                raise JobNotFound(job_id)
    rows = await connection.fetch(
        "SELECT f.id, f.job_id, f.status, f.filepath, f.filename, f.size, f.sha256, f.url"
        " FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE j.user_id = $1 AND (f.job_id = ANY($2::uuid[]) OR f.id = ANY($3::uuid[])"
        "   OR f.filepath = ANY($4::text[]))"
        " ORDER BY j.created_at, j.id, f.position",
        user_id,
        job_list,
        id_list,
        path_list,
    )
    has_artifacts = await _has_artifacts(connection)
    by_id = {str(r["id"]): r for r in rows}
    by_path = {r["filepath"]: r for r in rows if r["filepath"]}
    explicit_artifacts: list[asyncpg.Record] = []
    if has_artifacts and (missing := [f for f in id_list if f not in by_id]):
        explicit_artifacts += await _artifacts(
            connection, user_id, "a.id = ANY($2::uuid[])", missing
        )
    if has_artifacts and (missing_paths := [p for p in path_list if p not in by_path]):
        explicit_artifacts += await _artifacts(
            connection, user_id, "a.filepath = ANY($2::text[])", missing_paths
        )
    stored_artifacts = {str(a["id"]) for a in explicit_artifacts if a["filepath"]}
    artifact_paths = {a["filepath"] for a in explicit_artifacts if a["filepath"]}
    for file_id in id_list:
        row = by_id.get(file_id)
        if row is None and file_id not in stored_artifacts:
            raise NotFound(f"file {file_id} not found")
        if row is not None and row["status"] != "completed":
            raise NotExportable(
                f"file {file_id} is {row['status']}: only stored files can be exported"
            )
    for index, path in enumerate(path_list):
        if path not in by_path and path not in artifact_paths:
            raise NotFound(f"file_paths[{index}]: {path!r} is not one of your files")
        if path in by_path and by_path[path]["status"] != "completed":
            raise NotExportable(f"file_paths[{index}]: {path!r} has no stored bytes")

    stored = [r for r in rows if r["status"] == "completed" and r["filepath"]]
    file_ids_stored = [str(r["id"]) for r in stored]
    artifacts: list[asyncpg.Record] = []
    if has_artifacts and (file_ids_stored or job_list):
        artifacts = await _artifacts(
            connection,
            user_id,
            "(a.file_id = ANY($2::uuid[]) OR (a.file_id IS NULL AND a.job_id = ANY($3::uuid[])))",
            file_ids_stored,
            job_list,
        )
    seen_artifacts = {str(a["id"]) for a in artifacts}
    artifacts += [a for a in explicit_artifacts if str(a["id"]) not in seen_artifacts]

    metadata: dict[str, dict[str, Any]] = {}
    for artifact in artifacts:
        if artifact["kind"] == "metadata" and artifact["file_id"] and artifact["metadata"]:
            metadata[str(artifact["file_id"])] = artifact["metadata"]
    names = _Arcnames()
    items = [
        ExportItem(
            file_id=str(r["id"]),
            job_id=JobId(str(r["job_id"])),
            filepath=r["filepath"],
            arcname=names.take(
                f"{r['job_id']}/{r['filename'] or PurePosixPath(r['filepath']).name}"
            ),
            size=r["size"] or 0,
            sha256=r["sha256"] or "",
            url=r["url"],
            metadata=metadata.get(str(r["id"])),
        )
        for r in stored
    ]
    items += [
        ExportItem(
            file_id=str(a["id"]),
            job_id=JobId(str(a["job_id"])),
            filepath=a["filepath"],
            arcname=names.take(f"{a['job_id']}/artifacts/{PurePosixPath(a['filepath']).name}"),
            size=a["size"] or 0,
            sha256=a["sha256"] or "",
            kind=a["kind"],
            source_file_id=str(a["file_id"]) if a["file_id"] else None,
            metadata=a["metadata"] if isinstance(a["metadata"], dict) else None,
        )
        for a in artifacts
        if a["filepath"]
    ]
    involved = list(dict.fromkeys([*job_list, *(item.job_id for item in items)]))
    return Selection(items=tuple(items), jobs=tuple(await _jobs(connection, involved)))


async def _has_artifacts(connection: asyncpg.Connection) -> bool:
    # Processing artifacts arrive with their own migration; until then exports hold files only.
    return bool(await connection.fetchval("SELECT to_regclass('artifacts') IS NOT NULL"))


async def _artifacts(
    connection: asyncpg.Connection, user_id: UserId, condition: str, *args: Any
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT a.id, a.job_id, a.file_id, a.kind, a.filepath, a.size, a.sha256, a.metadata"
        " FROM artifacts a JOIN jobs j ON j.id = a.job_id"
        f" WHERE j.user_id = $1 AND {condition}"
        " ORDER BY a.created_at, a.id",
        user_id,
        *args,
    )
    return rows


async def _jobs(connection: asyncpg.Connection, job_ids: list[str]) -> list[dict[str, Any]]:
    rows = await connection.fetch(
        "SELECT id, status, priority, metadata, total_files, created_at, finished_at"
        " FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY created_at, id",
        job_ids,
    )
    return [
        {
            "job_id": str(r["id"]),
            "status": r["status"],
            "priority": r["priority"],
            "metadata": r["metadata"],
            "total_files": r["total_files"],
            "created_at": _iso(r["created_at"]),
            "finished_at": _iso(r["finished_at"]),
        }
        for r in rows
    ]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class _Arcnames:
    """Unique paths inside one archive: a repeated name gets `_2`, `_3`... before its suffix."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def take(self, wanted: str) -> str:
        candidate = wanted
        path = PurePosixPath(wanted)
        suffix = "".join(path.suffixes[-2:]) if path.suffixes[-1:] == [".gz"] else path.suffix
        stem = wanted[: len(wanted) - len(suffix)] if suffix else wanted
        number = 1
        while candidate.lower() in self._taken:
            number += 1
            candidate = f"{stem}_{number}{suffix}"
        self._taken.add(candidate.lower())  # case-insensitive filesystems extract them too
        return candidate


async def insert_export(
    connection: asyncpg.Connection,
    *,
    user_id: UserId,
    job_id: JobId | None,
    export_format: ExportFormat,
    include_metadata: bool,
    selection: Selection,
) -> str:
    """Write the export row and its BuildExport command (outbox) in the caller's transaction.

    The row keeps the command too: the reconciler publishes it again, as is, should Redis lose it.
    """
    export_id = str(uuid.uuid4())
    body = ENCODER.encode(
        BuildExport(
            export_id=export_id,
            user_id=user_id,
            format=export_format,
            include_metadata=include_metadata,
            items=selection.items,
            jobs=selection.jobs,
        )
    )
    await connection.execute(
        "INSERT INTO exports (id, user_id, job_id, format, include_metadata, file_count,"
        " total_bytes, command) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        export_id,
        user_id,
        job_id,
        export_format,
        include_metadata,
        len(selection.items),
        selection.total_bytes,
        body,
    )
    await repository.add_to_outbox(
        connection,
        EXPORT_STREAM,
        body,
        headers=trace_headers(),
        command_key=EXPORTS.key(export_id),
    )
    log.info(
        "export %s queued: %d items, %d bytes",
        export_id,
        len(selection.items),
        selection.total_bytes,
        extra={"export_id": export_id, "job_id": job_id},
    )
    return export_id


# --- the saga's end and the tracker's projection --------------------------------------------


async def export_finished_job(
    connection: asyncpg.Connection, job_id: JobId, status: JobStatus
) -> str | None:
    """Queue the automatic export of a job that just ended, when it asked for one; its id.

    Runs in the tracker's transaction that finishes the job, so the job's end and its export
    are written together or not at all. The exporter enforces the size limit for these.
    """
    if status not in (JobStatus.COMPLETED, JobStatus.PARTIAL):
        return None
    row = await connection.fetchrow("SELECT user_id, options FROM jobs WHERE id = $1", job_id)
    wanted = (row["options"] or {}).get("export") if row is not None else None
    if row is None or not isinstance(wanted, dict):
        return None
    user_id = UserId(str(row["user_id"]))
    selection = await resolve_selection(connection, user_id, job_ids=[job_id])
    if not selection.items:
        return None
    return await insert_export(
        connection,
        user_id=user_id,
        job_id=job_id,
        export_format="tar.gz" if wanted.get("format") == "tar.gz" else "zip",
        include_metadata=bool(wanted.get("include_metadata", True)),
        selection=selection,
    )


async def project_export_event(
    connection: asyncpg.Connection, event: ExportProgress | ExportReady | ExportFailed
) -> None:
    """Apply one export event; only pending and building exports move, so a replayed, late
    or out-of-order event (or one after a cancel) changes nothing."""
    if isinstance(event, ExportProgress):
        # Not recorded in processed_events: GREATEST makes progress idempotent by itself.
        await connection.execute(
            "UPDATE exports SET status = 'building', files_done = greatest(files_done, $2),"
            " bytes_done = greatest(bytes_done, $3), updated_at = now()"
            " WHERE id = $1 AND status IN ('pending', 'building')",
            event.export_id,
            event.files_done,
            event.bytes_done,
        )
        return
    async with connection.transaction():
        if not await repository.claim_event(connection, event.event_id):
            return
        if isinstance(event, ExportFailed):
            await connection.execute(
                "UPDATE exports SET status = 'failed', error = $2, finished_at = to_timestamp($3),"
                " updated_at = now() WHERE id = $1 AND status IN ('pending', 'building')",
                event.export_id,
                event.error,
                event.at,
            )
        else:
            await connection.execute(
                "UPDATE exports SET status = 'ready', filepath = $2, size = $3, sha256 = $4,"
                " files_done = file_count, bytes_done = total_bytes, error = NULL,"
                " finished_at = to_timestamp($5), updated_at = now()"
                " WHERE id = $1 AND status IN ('pending', 'building')",
                event.export_id,
                event.filepath,
                event.size,
                event.sha256,
                event.at,
            )
    outcome = "failed" if isinstance(event, ExportFailed) else "ready"
    log.info("export %s %s", event.export_id, outcome, extra={"export_id": event.export_id})


# --- the reconciler: builds Redis lost ----------------------------------------------------------
# Like downloads: a pending export's command is lost when its live marker is; a building one is
# stale when no progress came for `stale_s` (the exporter reports every progress_interval_s).


async def _exports_sent(
    connection: asyncpg.Connection, after: str | None, limit: int
) -> list[repository.QueuedCommand]:
    """Pending exports whose command left the outbox, in id order after `after`."""
    rows = await connection.fetch(
        "SELECT e.id, e.command FROM exports e"
        " WHERE e.status = 'pending' AND e.command IS NOT NULL"
        " AND ($1::uuid IS NULL OR e.id > $1)"
        f" AND {repository.no_row_waiting('$3::text || e.id::text')}"
        " ORDER BY e.id LIMIT $2",
        after,
        limit,
        EXPORTS.key_prefix,
    )
    return [_queued_export(row) for row in rows]


async def _exports_stale(
    connection: asyncpg.Connection, stale_s: float, limit: int
) -> list[repository.QueuedCommand]:
    """Building exports with no progress for `stale_s` and not re-published within it."""
    rows = await connection.fetch(
        "SELECT e.id, e.command FROM exports e"
        " WHERE e.status = 'building' AND e.command IS NOT NULL"
        " AND e.updated_at < now() - make_interval(secs => $1)"
        f" AND {repository.not_queued_within('$3::text || e.id::text', '$1')}"
        " ORDER BY e.updated_at LIMIT $2",
        stale_s,
        limit,
        EXPORTS.key_prefix,
    )
    return [_queued_export(row) for row in rows]


async def _exports_open(connection: asyncpg.Connection, export_ids: Sequence[str]) -> set[str]:
    rows = await connection.fetch(
        "SELECT id FROM exports WHERE id = ANY($1::uuid[])"
        " AND status IN ('pending', 'building') FOR UPDATE SKIP LOCKED",
        export_ids,
    )
    return {str(row["id"]) for row in rows}


def _queued_export(row: asyncpg.Record) -> repository.QueuedCommand:
    export_id = str(row["id"])
    return repository.QueuedCommand(
        subject_id=export_id,
        key=EXPORTS.key(export_id),
        stream=EXPORT_STREAM,
        body=row["command"],
    )


EXPORTS = repository.CommandKind(
    name="export",
    key_prefix="export:",
    sent=_exports_sent,
    still_open=_exports_open,
    stale=_exports_stale,
)
