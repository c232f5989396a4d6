"""Reopening a user's failed work on the record, its commands queued in the same transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.dead_letters.queries import reopen_task_for_redrive
from services.gateway.errors import CannotRedrive, JobNotFound
from services.gateway.jobs.commands import DOWNLOADS
from services.gateway.outbox import add_to_outbox
from services.gateway.tasks.errors import TaskNotFound
from shared.events import ENCODER, DownloadFile
from shared.ids import FileId, JobId, UserId
from shared.statuses import FINAL_JOB_STATUSES, JobStatus
from shared.streams import download_stream, lane_for

if TYPE_CHECKING:
    from collections.abc import Sequence

    import asyncpg


async def reopen_failed_files(
    pool: asyncpg.Pool, user_id: UserId, job_id: JobId, *, headers: dict[str, str]
) -> list[FileId]:
    """Make every failed file of the user's job pending again, each with its command queued,
    and the job in progress again if it ended; the ids reopened (none when none had failed).

    Raises JobNotFound (not the user's job), CannotRedrive for a cancelled job.
    """
    async with pool.acquire() as connection, connection.transaction():
        # The job first, then its files: the lock order of the tracker and of cancellation.
        status = await connection.fetchval(
            "SELECT status FROM jobs WHERE id = $1 AND user_id = $2 FOR UPDATE", job_id, user_id
        )
        if status is None:
            raise JobNotFound(job_id)
        if status == JobStatus.CANCELLED:
            raise CannotRedrive(f"job {job_id} was cancelled; its files stay cancelled")
        # Columns as submit wrote the command (services.gateway.jobs.commands rebuilds the same).
        rows = await connection.fetch(
            "UPDATE files f SET status = 'pending', error = NULL, rate_bps = NULL,"
            " updated_at = now() FROM jobs j"
            " WHERE j.id = f.job_id AND f.job_id = $1 AND f.status = 'failed'"
            " RETURNING f.id, f.url, f.requested_name, f.expected_sha256, j.priority",
            job_id,
        )
        if not rows:
            return []
        await connection.execute(
            "UPDATE jobs SET reopened_at = now(), updated_at = now(),"
            " status = CASE WHEN $2 THEN 'in_progress' ELSE status END,"
            " finished_at = CASE WHEN $2 THEN NULL ELSE finished_at END,"
            " error = CASE WHEN $2 THEN NULL ELSE error END"
            " WHERE id = $1",
            job_id,
            JobStatus(status) in FINAL_JOB_STATUSES,
        )
        commands = [_command(row, job_id, user_id) for row in rows]
        for command in commands:
            await add_to_outbox(
                connection,
                download_stream(lane_for(command.priority)),
                ENCODER.encode(command),
                headers=headers,
                command_key=DOWNLOADS.key(command.file_id),
                file_id=command.file_id,
            )
    return [command.file_id for command in commands]


def _command(row: asyncpg.Record, job_id: JobId, user_id: UserId) -> DownloadFile:
    return DownloadFile(
        job_id=job_id,
        file_id=FileId(str(row["id"])),
        user_id=user_id,
        url=row["url"],
        filename=row["requested_name"],
        sha256=row["expected_sha256"],
        priority=row["priority"],
    )


async def reopen_tasks(
    pool: asyncpg.Pool, task_ids: Sequence[str], *, headers: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Re-drive each task as its dead letter's retry does; the ids reopened, and why the
    others were not (they ended otherwise, or were purged, since they were picked)."""
    reopened: list[str] = []
    refused: dict[str, str] = {}
    for task_id in task_ids:
        try:
            await reopen_task_for_redrive(pool, task_id, headers=headers)
        except (CannotRedrive, TaskNotFound) as exc:
            refused[task_id] = str(exc)
        else:
            reopened.append(task_id)
    return reopened, refused
