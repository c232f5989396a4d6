"""Re-driving dead work on the record: a download's file (and job) reopened, or a task, and
the command queued again in the same transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from services.gateway.errors import CannotRedrive, FileNotFound, JobNotFound
from services.gateway.jobs.commands import DOWNLOADS
from services.gateway.jobs.lifecycle import lock_job
from services.gateway.outbox import add_to_outbox
from services.gateway.tasks.commands import queued_task
from services.gateway.tasks.errors import TaskNotFound
from services.gateway.tasks.records import OPEN_STATUSES
from shared.consumer import ATTEMPT_HEADER
from shared.events import ENCODER, TASK_DECODER
from shared.statuses import FINAL_JOB_STATUSES, JobStatus
from shared.task_types import TaskStatus

if TYPE_CHECKING:
    import asyncpg

    from shared.events import DownloadFile


async def reopen_for_redrive(
    pool: asyncpg.Pool,
    command: DownloadFile,
    *,
    stream: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    """Reopen the command's file (and its job, if it ended) and queue the command again.

    One transaction: either the file is pending again with its command in the outbox, or
    nothing changed. Raises JobNotFound/FileNotFound, or CannotRedrive for a cancelled job,
    a file that was stored after all, or one not failed (re-driven already, say).
    """
    async with pool.acquire() as connection, connection.transaction():
        # The job first, then its file: the lock order of the tracker and of cancellation.
        status = await lock_job(connection, command.job_id)
        if status is None:
            raise JobNotFound(command.job_id)
        if status is JobStatus.CANCELLED:
            raise CannotRedrive(f"job {command.job_id} was cancelled; its files stay cancelled")
        await _reopen_file(connection, command)
        # An ended job runs again; either way its timeout counts from now, or an old job would
        # time out again at the reconciler's next pass, before the work had a chance.
        await connection.execute(
            "UPDATE jobs SET reopened_at = now(), updated_at = now(),"
            " status = CASE WHEN $2 THEN 'in_progress' ELSE status END,"
            " finished_at = CASE WHEN $2 THEN NULL ELSE finished_at END,"
            " error = CASE WHEN $2 THEN NULL ELSE error END"
            " WHERE id = $1",
            command.job_id,
            status in FINAL_JOB_STATUSES,
        )
        await add_to_outbox(
            connection,
            stream,
            body,
            headers=headers,
            command_key=DOWNLOADS.key(command.file_id),
            file_id=command.file_id,
        )


async def _reopen_file(connection: asyncpg.Connection, command: DownloadFile) -> None:
    file_status = await connection.fetchval(
        "SELECT status FROM files WHERE id = $1 AND job_id = $2 FOR UPDATE",
        command.file_id,
        command.job_id,
    )
    if file_status is None:
        raise FileNotFound(command.file_id)
    if file_status in ("completed", "cancelled"):
        raise CannotRedrive(f"file {command.file_id} is {file_status}; nothing to re-drive")
    if file_status != "failed":
        # Re-driven already (a second retry of the letter, or its job's retry-failed), or its
        # FileFailed is on its way to the tracker: another command now would run it twice.
        raise CannotRedrive(
            f"file {command.file_id} is {file_status}: it is queued again already, or its"
            " failure is not recorded yet"
        )
    # `attempts` stays: it is the history of tries, and the new command starts at try 1.
    await connection.execute(
        "UPDATE files SET status = 'pending', error = NULL, rate_bps = NULL,"
        " updated_at = now() WHERE id = $1",
        command.file_id,
    )


async def reopen_task_for_redrive(
    pool: asyncpg.Pool, task_id: str, *, headers: dict[str, str]
) -> None:
    """Make a dead (or failed) task pending again and queue its command, in one transaction.

    Its attempts and error stay until the next outcome; the command carries the attempts made
    so far, so its tries go on being numbered (the projection takes only later tries), and
    it gets its whole `max_tries` again (RunTask.redriven_after). Raises TaskNotFound
    (purged), or CannotRedrive for a task that is cancelled, completed, or whose end is not
    recorded yet.
    """
    async with pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow("SELECT * FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        if row is None:
            raise TaskNotFound(task_id)
        status = TaskStatus(row["status"])
        if status in OPEN_STATUSES:
            # Its TaskFailed is on its way to the tracker: reopening now would be undone by it.
            raise CannotRedrive(f"task {task_id} is {status}; its end is not recorded yet")
        if status not in (TaskStatus.DEAD, TaskStatus.FAILED):
            raise CannotRedrive(f"task {task_id} is {status}; nothing to re-drive")
        # A fresh set of tries from here, kept on the row so a command the reconciler rebuilds
        # from it (a Redis loss) counts the same way.
        redriven = msgspec.structs.replace(
            TASK_DECODER.decode(row["command"]), redriven_after=row["attempts"]
        )
        body = ENCODER.encode(redriven)
        await connection.execute(
            "UPDATE tasks SET status = 'pending', finished_at = NULL, command = $2,"
            " updated_at = now() WHERE id = $1",
            task_id,
            body,
        )
        # The row's command, with its checkpoint where the area keeps one.
        command = queued_task({**row, "command": body})
        await add_to_outbox(
            connection,
            command.stream,
            command.body,
            headers={**headers, ATTEMPT_HEADER: str(row["attempts"])},
            command_key=command.key,
        )
