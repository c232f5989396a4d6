"""What a user may export: a selection (jobs, file ids, file paths) resolved into the user's
stored files and their artifacts, each with its name inside the archive.

Anything outside the user's own area is refused: another user's ids and keys answer 404 as
everywhere, a path or link that leaves the area 403, a file without stored bytes 409.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from services.gateway.errors import (
    InvalidRequest,
    JobNotFound,
    NotExportable,
    NotFound,
    PathRefused,
)
from services.gateway.exports.records import Selection
from shared.events import ExportItem
from shared.ids import JobId
from shared.storage import ObjectRefused, StorageError
from shared.storage.keys import user_area

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    import asyncpg

    from shared.ids import UserId
    from shared.storage import Storage

_FILE_COLUMNS = "f.id, f.job_id, f.status, f.filepath, f.filename, f.size, f.sha256, f.url"
_ARTIFACT_COLUMNS = "a.id, a.job_id, a.file_id, a.kind, a.filepath, a.size, a.sha256, a.metadata"


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
            if key is None or not key.startswith(user_area(user_id)):
                raise PathRefused(f"{field}: {path!r} is outside your storage area")
        else:
            key = path
        if "" in key.split("/"):
            raise InvalidRequest(f"{field}: empty segments are not allowed in a file path")
        if not key.startswith(user_area(user_id)):
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
    await _check_jobs(connection, user_id, job_list)
    files = await connection.fetch(
        f"SELECT {_FILE_COLUMNS} FROM files f JOIN jobs j ON j.id = f.job_id"
        " WHERE j.user_id = $1 AND (f.job_id = ANY($2::uuid[]) OR f.id = ANY($3::uuid[])"
        "   OR f.filepath = ANY($4::text[]))"
        " ORDER BY j.created_at, j.id, f.position",
        user_id,
        job_list,
        id_list,
        path_list,
    )
    has_artifacts = await _has_artifacts(connection)
    named = _Named(files, id_list, path_list)
    explicit = await named.artifacts(connection, user_id) if has_artifacts else []
    named.check(explicit)
    stored = [r for r in files if r["status"] == "completed" and r["filepath"]]
    artifacts: list[asyncpg.Record] = []
    if has_artifacts and (stored or job_list):
        artifacts = await _artifacts(
            connection,
            user_id,
            "(a.file_id = ANY($2::uuid[]) OR (a.file_id IS NULL AND a.job_id = ANY($3::uuid[])))",
            [str(r["id"]) for r in stored],
            job_list,
        )
    seen = {str(a["id"]) for a in artifacts}
    artifacts += [a for a in explicit if str(a["id"]) not in seen]
    items = _items(stored, artifacts)
    involved = list(dict.fromkeys([*job_list, *(item.job_id for item in items)]))
    return Selection(items=tuple(items), jobs=tuple(await _jobs(connection, involved)))


async def _check_jobs(connection: asyncpg.Connection, user_id: UserId, job_ids: list[str]) -> None:
    """JobNotFound for the first job id that is not the caller's."""
    if not job_ids:
        return
    found = {
        str(r["id"])
        for r in await connection.fetch(
            "SELECT id FROM jobs WHERE user_id = $1 AND id = ANY($2::uuid[])", user_id, job_ids
        )
    }
    for job_id in job_ids:
        if job_id not in found:
            raise JobNotFound(job_id)


class _Named:
    """The file ids and paths a selection names explicitly, against the files found for them."""

    def __init__(self, files: Sequence[asyncpg.Record], ids: list[str], paths: list[str]) -> None:
        self.ids, self.paths = ids, paths
        self.by_id = {str(r["id"]): r for r in files}
        self.by_path = {r["filepath"]: r for r in files if r["filepath"]}

    async def artifacts(
        self, connection: asyncpg.Connection, user_id: UserId
    ) -> list[asyncpg.Record]:
        """The artifacts named by the ids and paths that are no file."""
        found: list[asyncpg.Record] = []
        if missing := [f for f in self.ids if f not in self.by_id]:
            found += await _artifacts(connection, user_id, "a.id = ANY($2::uuid[])", missing)
        if missing_paths := [p for p in self.paths if p not in self.by_path]:
            found += await _artifacts(
                connection, user_id, "a.filepath = ANY($2::text[])", missing_paths
            )
        return found

    def check(self, artifacts: Sequence[asyncpg.Record]) -> None:
        """NotFound for what is neither a file nor an artifact, NotExportable for an unstored
        file."""
        artifact_ids = {str(a["id"]) for a in artifacts if a["filepath"]}
        artifact_paths = {a["filepath"] for a in artifacts if a["filepath"]}
        for file_id in self.ids:
            row = self.by_id.get(file_id)
            if row is None and file_id not in artifact_ids:
                raise NotFound(f"file {file_id} not found")
            if row is not None and row["status"] != "completed":
                raise NotExportable(
                    f"file {file_id} is {row['status']}: only stored files can be exported"
                )
        for index, path in enumerate(self.paths):
            if path not in self.by_path and path not in artifact_paths:
                raise NotFound(f"file_paths[{index}]: {path!r} is not one of your files")
            if path in self.by_path and self.by_path[path]["status"] != "completed":
                raise NotExportable(f"file_paths[{index}]: {path!r} has no stored bytes")


def _items(
    stored: Sequence[asyncpg.Record], artifacts: Sequence[asyncpg.Record]
) -> list[ExportItem]:
    """The archive's items: the stored files, then the artifacts with bytes, uniquely named."""
    metadata: dict[str, dict[str, Any]] = {
        str(a["file_id"]): a["metadata"]
        for a in artifacts
        if a["kind"] == "metadata" and a["file_id"] and a["metadata"]
    }
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
    return items


async def _has_artifacts(connection: asyncpg.Connection) -> bool:
    # Processing artifacts arrive with their own migration; until then exports hold files only.
    return bool(await connection.fetchval("SELECT to_regclass('artifacts') IS NOT NULL"))


async def _artifacts(
    connection: asyncpg.Connection, user_id: UserId, condition: str, *args: Any
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a JOIN jobs j ON j.id = a.job_id"
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
