"""A job's totals on its row: equal to a recount after any mix of events, cancels, timeouts and
re-drives, backfilled by their migration, and read without touching the job's other files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg

from services.gateway.dead_letters.queries import reopen_for_redrive
from services.gateway.jobs.lifecycle import TimedOutJob, time_out_job
from services.gateway.jobs.queries import JobRepository
from services.gateway.migrations import _migration_files, migrate
from services.gateway.tracker import project
from shared.events import DownloadFile
from shared.ids import FileId, JobId, UserId, new_job_id
from shared.postgres import open_pool
from tests.gateway.support import downloaded, failed, progress, started, submit_job, user_id

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.events import PipelineEvent
    from tests.gateway.conftest import TokenFactory

_COUNTERS = (
    "files_downloading, files_completed, files_failed, files_cancelled, bytes_downloaded,"
    " processing_total, processing_completed, processing_failed"
)
_RECOUNT = (
    "SELECT count(*) FILTER (WHERE status = 'downloading') AS files_downloading,"
    " count(*) FILTER (WHERE status = 'completed') AS files_completed,"
    " count(*) FILTER (WHERE status = 'failed') AS files_failed,"
    " count(*) FILTER (WHERE status = 'cancelled') AS files_cancelled,"
    " coalesce(sum(bytes_downloaded), 0) AS bytes_downloaded,"
    " count(*) FILTER (WHERE processing_status IS NOT NULL) AS processing_total,"
    " count(*) FILTER (WHERE processing_status = 'completed') AS processing_completed,"
    " count(*) FILTER (WHERE processing_status = 'failed') AS processing_failed"
    " FROM files WHERE job_id = $1"
)


async def _counters(connection: asyncpg.Pool | asyncpg.Connection, job_id: JobId) -> dict[str, Any]:
    return dict(await connection.fetchrow(f"SELECT {_COUNTERS} FROM jobs WHERE id = $1", job_id))


async def _recount(connection: asyncpg.Pool | asyncpg.Connection, job_id: JobId) -> dict[str, Any]:
    return dict(await connection.fetchrow(_RECOUNT, job_id))


async def _apply(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)


async def test_counters_equal_a_recount_after_a_mixed_run(pool: asyncpg.Pool) -> None:
    owner = await user_id(pool, "alice")
    job_id, files = await submit_job(pool, owner, files=8)
    done = downloaded(job_id, files[0], b"x" * 100)
    gone = failed(job_id, files[1])
    await _apply(
        pool,
        started(job_id, files[0]),
        progress(job_id, files[0], 40, 100),
        done,
        done,  # a replay
        started(job_id, files[0], attempt=2),  # late: the file is completed already
        progress(job_id, files[0], 70, 100),  # late as well
        started(job_id, files[1]),
        gone,
        gone,  # a replay
        downloaded(job_id, files[1]),  # out of order: the file failed for good
        downloaded(job_id, files[2], b"y" * 7),  # completed without a start
        started(job_id, files[3]),
        started(job_id, files[3], attempt=2),  # a resumed download stays one downloading file
        progress(job_id, files[3], 30, 90),
        progress(job_id, files[3], 10, 90),  # stale progress never goes back
        failed(job_id, files[4]),  # failed while pending
        started(job_id, files[5]),
    )

    middle = await _counters(pool, job_id)
    assert middle == await _recount(pool, job_id)
    assert middle["files_completed"] == 2
    assert middle["files_failed"] == 2
    assert middle["files_downloading"] == 2
    assert middle["bytes_downloaded"] == 100 + 7 + 30

    await JobRepository(pool).cancel(owner, job_id, reason=None, trace_headers={})
    await _apply(pool, downloaded(job_id, files[6]))  # after the cancel: changes nothing

    after = await _counters(pool, job_id)
    assert after == await _recount(pool, job_id)
    assert after["files_cancelled"] == 4
    assert after["files_downloading"] == 0


async def test_counters_follow_a_timeout_and_a_redrive(pool: asyncpg.Pool) -> None:
    owner = await user_id(pool, "alice")
    job_id, files = await submit_job(pool, owner, files=4)
    await _apply(pool, downloaded(job_id, files[0]), started(job_id, files[1]))
    await pool.execute("UPDATE jobs SET timeout_s = 1, created_at = now() - interval '1 hour'")
    async with pool.acquire() as connection, connection.transaction():
        failed_now = await time_out_job(
            connection, TimedOutJob(job_id=job_id, timeout_s=1), default_timeout_s=60
        )
    assert failed_now == 3
    timed_out = await _counters(pool, job_id)
    assert timed_out == await _recount(pool, job_id)
    assert (timed_out["files_completed"], timed_out["files_failed"]) == (1, 3)

    await reopen_for_redrive(
        pool, _download(job_id, files[2], owner), stream="s", body=b"{}", headers={}
    )
    reopened = await _counters(pool, job_id)
    assert reopened == await _recount(pool, job_id)
    assert reopened["files_failed"] == 2
    status = await JobRepository(pool).job_status(owner, job_id)
    assert (status.progress.completed, status.progress.failed) == (1, 2)


def _download(job_id: JobId, file_id: FileId, owner: UserId) -> DownloadFile:
    return DownloadFile(
        job_id=job_id,
        file_id=file_id,
        user_id=owner,
        url="http://127.0.0.1:9/f.bin",
        filename=None,
        sha256=None,
        priority=5,
    )


async def _bulk_job(pool: asyncpg.Pool, owner: UserId, files: int) -> JobId:
    """A job of `files` files written in one statement: a third completed, a third downloading."""
    job_id = new_job_id()
    await pool.execute(
        "INSERT INTO jobs (id, user_id, priority, total_files, status)"
        " VALUES ($1, $2, 5, $3, 'in_progress')",
        job_id,
        owner,
        files,
    )
    await pool.execute(
        "INSERT INTO files (id, job_id, position, url)"
        " SELECT gen_random_uuid(), $1, n, 'http://127.0.0.1:9/f' || n"
        " FROM generate_series(0, $2 - 1) n",
        job_id,
        files,
    )
    # Through the state changes, as the tracker would make them, so the counters follow.
    await pool.execute(
        "UPDATE files SET status = CASE position % 3 WHEN 0 THEN 'completed'"
        " WHEN 1 THEN 'downloading' ELSE 'pending' END, bytes_downloaded = 10"
        " WHERE job_id = $1 AND position % 3 < 2",
        job_id,
    )
    return job_id


async def _files_rows_read(connection: asyncpg.Connection) -> int:
    """Rows of `files` this backend has read so far, its pending statistics flushed first."""
    await connection.execute("SELECT pg_stat_force_next_flush()")
    await connection.execute("SELECT pg_stat_clear_snapshot()")
    row = await connection.fetchrow(
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) AS read"
        " FROM pg_stat_user_tables WHERE relname = 'files'"
    )
    return int(row["read"])


async def _status_reads(database_url: str, owner: UserId, job_id: JobId) -> int:
    """Rows of `files` read by the job-status query of GET /status/{job_id}, on one backend."""
    async with open_pool(database_url, min_size=1, max_size=1) as single:
        async with single.acquire() as connection:
            before = await _files_rows_read(connection)
        await JobRepository(single).job_status(owner, job_id)
        async with single.acquire() as connection:
            return await _files_rows_read(connection) - before


async def test_status_reads_do_not_grow_with_the_job(
    pool: asyncpg.Pool,
    database_url: str,
    client: AsyncTestClient[Litestar],
    make_auth: TokenFactory,
) -> None:
    auth = await make_auth("alice")
    owner = await user_id(pool, "alice")
    small, large = await _bulk_job(pool, owner, 10), await _bulk_job(pool, owner, 10_000)
    await pool.execute("ANALYZE files")

    response = await client.get(f"/api/v1/downloads/jobs/{large}", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()["progress"]
    assert (body["total"], body["completed"], body["failed"]) == (10_000, 3334, 0)
    assert body["bytes_downloaded"] == 6667 * 10
    assert body["current_file"] == "http://127.0.0.1:9/f1"
    listed = (await client.get("/api/v1/downloads/jobs", headers=auth)).json()["jobs"]
    assert [job["progress"] for job in listed if job["job_id"] == str(large)] == [body]

    small_reads = await _status_reads(database_url, owner, small)
    large_reads = await _status_reads(database_url, owner, large)
    assert large_reads <= small_reads + 2, (small_reads, large_reads)
    assert large_reads <= 5


async def test_migration_backfills_the_counters_of_existing_jobs(empty_database_url: str) -> None:
    connection = await asyncpg.connect(empty_database_url)
    try:
        await connection.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
        for version, sql in _migration_files():
            if version < "0007":
                await connection.execute(sql)
                await connection.execute("INSERT INTO schema_migrations VALUES ($1)", version)
        owner = await connection.fetchval(
            "INSERT INTO users (id, name) VALUES (gen_random_uuid(), 'alice') RETURNING id"
        )
        job_id = new_job_id()
        await connection.execute(
            "INSERT INTO jobs (id, user_id, priority, total_files) VALUES ($1, $2, 5, 6)",
            job_id,
            owner,
        )
        await connection.execute(
            "INSERT INTO files (id, job_id, position, url, status, bytes_downloaded,"
            " processing_status) SELECT gen_random_uuid(), $1, n, 'http://127.0.0.1:9/f',"
            " (ARRAY['pending', 'downloading', 'completed', 'completed', 'failed', 'cancelled'])"
            "[n + 1], n * 10, CASE WHEN n = 2 THEN 'completed' END FROM generate_series(0, 5) n",
            job_id,
        )

        assert (await migrate(empty_database_url))[0] == "0007_job_counters"

        counters = await _counters(connection, job_id)
        assert counters == await _recount(connection, job_id)
        assert counters["files_completed"] == 2
        assert counters["processing_completed"] == 1
    finally:
        await connection.close()
