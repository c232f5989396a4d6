"""Helpers for gateway tests: users and jobs written straight to PostgreSQL, events, frames."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any

from faststream.redis.parser import BinaryMessageFormatV1

from services.gateway.jobs.queries import JobRepository
from services.gateway.jobs.records import NewFile, NewJob
from shared.events import FileDownloaded, FileFailed, FileProgress, FileStarted
from shared.ids import EventId, FileId, JobId, UserId, new_event_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg
    from redis.asyncio import Redis


async def user_id(pool: asyncpg.Pool, name: str) -> UserId:
    """The id of user `name`, creating the user (without a token) when missing."""
    value = await pool.fetchval(
        "INSERT INTO users (id, name) VALUES (gen_random_uuid(), $1)"
        " ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        name,
    )
    return UserId(str(value))


async def submit_job(
    pool: asyncpg.Pool,
    owner: UserId,
    *,
    files: int = 3,
    priority: int = 5,
) -> tuple[JobId, list[FileId]]:
    """Write a job of `files` files the way POST /download does; returns its ids."""
    submitted = await JobRepository(pool).submit(
        NewJob(
            user_id=owner,
            priority=priority,
            files=[NewFile(url=f"http://127.0.0.1:9/f{n}.bin") for n in range(files)],
        ),
        trace_headers={},
    )
    rows = await pool.fetch(
        "SELECT id FROM files WHERE job_id = $1 ORDER BY position", submitted.job_id
    )
    return submitted.job_id, [FileId(str(row["id"])) for row in rows]


def started(
    job: JobId, file: FileId, *, attempt: int = 1, event_id: str | None = None
) -> FileStarted:
    return FileStarted(
        event_id=EventId(event_id or new_event_id()),
        job_id=job,
        at=time.time(),
        file_id=file,
        attempt=attempt,
        worker="test",
    )


def progress(job: JobId, file: FileId, done: int, total: int | None = None) -> FileProgress:
    return FileProgress(
        event_id=new_event_id(),
        job_id=job,
        at=time.time(),
        file_id=file,
        bytes_downloaded=done,
        total_bytes=total,
        rate_bps=1000.0,
    )


def downloaded(
    job: JobId,
    file: FileId,
    data: bytes = b"0123456789",
    *,
    name: str = "f.bin",
    event_id: str | None = None,
    content_type: str | None = "application/octet-stream",
) -> FileDownloaded:
    return FileDownloaded(
        event_id=EventId(event_id or new_event_id()),
        job_id=job,
        at=time.time(),
        file_id=file,
        filename=name,
        filepath=f"u/{job}/{name}",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=content_type,
    )


def failed(
    job: JobId, file: FileId, *, attempts: int = 3, event_id: str | None = None
) -> FileFailed:
    return FileFailed(
        event_id=EventId(event_id or new_event_id()),
        job_id=job,
        at=time.time(),
        file_id=file,
        error="HTTP 404 from http://127.0.0.1:9/",
        attempts=attempts,
    )


async def stream_frames(redis: Redis, stream: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Body and headers of every entry of `stream`, as FastStream framed them."""
    entries = await redis.xrange(stream)
    return [BinaryMessageFormatV1.parse(fields[b"__data__"]) for _id, fields in entries]


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Wait until `check()` is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)
