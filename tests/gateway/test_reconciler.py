"""The reconciler on real Redis and PostgreSQL: lost work returns, old jobs end, streams shrink."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

import services.gateway.migrations
from services.gateway.app import create_app
from services.gateway.exports.commands import EXPORTS
from services.gateway.exports.queries import ExportRepository
from services.gateway.jobs.queries import JobRepository
from services.gateway.jobs.records import NewFile, NewJob
from services.gateway.migrations import migrate
from services.gateway.outbox import OutboxRelay
from services.gateway.processing.commands import COMPOSITES, FILE_PROCESSING
from services.gateway.processing.queries import composite_key
from services.gateway.reconciler import RECONCILE_LOCK, Reconciler
from services.gateway.tracker import project
from shared.events import (
    DOWNLOAD_DECODER,
    ENCODER,
    EVENT_DECODER,
    EXPORT_DECODER,
    PROCESS_DECODER,
    ArtifactCreated,
    BuildComposite,
    BuildExport,
    CompositeFinished,
    DownloadFile,
    ExportProgress,
    FileProcessed,
    JobFinished,
    ProcessFile,
)
from shared.ids import FileId, JobId, UserId, new_event_id
from shared.storage.local import LocalStorage
from shared.streams import (
    CANCEL_CHANNEL,
    EVENTS_STREAM,
    EXPORT_STREAM,
    GROUPS,
    TRACKER_GROUP,
    cancelled_key,
    download_stream,
    lane_for,
    live_key,
    process_stream,
)
from tests.gateway.support import downloaded, eventually, started, stream_frames, submit_job
from tests.gateway.support import user_id as make_user

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from shared.events import ArtifactKind, PipelineEvent
    from shared.settings import Settings

LANE = download_stream(lane_for(5))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def relay(pool: asyncpg.Pool, redis: Redis) -> OutboxRelay:
    return OutboxRelay(pool, redis)


@pytest.fixture
def woken() -> list[bool]:
    return []


@pytest.fixture
def reconciler(
    pool: asyncpg.Pool, redis: Redis, settings: Settings, woken: list[bool]
) -> Reconciler:
    return Reconciler(pool, redis, settings, on_outbox_written=lambda: woken.append(True))


@pytest.fixture
async def job(pool: asyncpg.Pool, relay: OutboxRelay) -> tuple[JobId, list[FileId]]:
    """A job of three pending files whose commands the relay has published."""
    submitted = await submit_job(pool, await make_user(pool, "alice"), files=3)
    assert await relay.relay_once() == 3
    return submitted


async def _apply(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)


async def _lane_files(redis: Redis) -> list[str]:
    return [DOWNLOAD_DECODER.decode(body).file_id for body, _ in await stream_frames(redis, LANE)]


async def _unsent(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY id"))


async def _row(pool: asyncpg.Pool, table: str, row_id: str) -> dict[str, Any]:
    return dict(await pool.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id))


# --- Redis loss -----------------------------------------------------------------------------


async def test_a_flush_brings_back_pending_files_and_the_groups(
    pool: asyncpg.Pool,
    redis: Redis,
    relay: OutboxRelay,
    reconciler: Reconciler,
    woken: list[bool],
    job: tuple[JobId, list[FileId]],
) -> None:
    _job_id, files = job
    before = await stream_frames(redis, LANE)

    await redis.flushdb()
    report = await reconciler.reconcile_once()

    assert report.ran
    assert report.republished_lost == 3
    assert woken  # the relay was told at once
    for group, streams in GROUPS.items():
        for stream in streams:
            assert group.encode() in {g["name"] for g in await redis.xinfo_groups(stream)}
    assert await relay.relay_once() == 3
    after = await stream_frames(redis, LANE)
    # The same commands, byte for byte, and their markers are back with them.
    assert sorted(body for body, _ in after) == sorted(body for body, _ in before)
    assert sorted(await _lane_files(redis)) == sorted(files)
    assert all([await redis.exists(live_key(f)) for f in files])
    # Nothing is lost twice: the next pass finds every marker.
    assert (await reconciler.reconcile_once()).republished_lost == 0


async def test_a_pending_file_whose_marker_exists_is_left_alone(
    pool: asyncpg.Pool,
    redis: Redis,
    reconciler: Reconciler,
    woken: list[bool],
    job: tuple[JobId, list[FileId]],
) -> None:
    _job_id, files = job
    # AOF lost its last second for one file only: its marker and command went together.
    await redis.delete(live_key(files[1]))

    report = await reconciler.reconcile_once()

    assert report.republished_lost == 1
    (row,) = await _unsent(pool)
    assert str(row["file_id"]) == files[1]
    assert DOWNLOAD_DECODER.decode(row["body"]).file_id == files[1]


async def test_files_whose_row_was_not_sent_yet_are_not_published_twice(
    pool: asyncpg.Pool, redis: Redis, reconciler: Reconciler, woken: list[bool]
) -> None:
    await submit_job(pool, await make_user(pool, "alice"), files=2)  # not relayed yet

    report = await reconciler.reconcile_once()

    assert report.republished_lost == 0
    assert len(await _unsent(pool)) == 2  # only the submit's own rows
    assert not woken


async def test_files_of_ended_jobs_are_not_published_again(
    pool: asyncpg.Pool,
    redis: Redis,
    reconciler: Reconciler,
    job: tuple[JobId, list[FileId]],
) -> None:
    job_id, _files = job
    await pool.execute("UPDATE jobs SET status = 'cancelled', finished_at = now()")
    await redis.flushdb()

    assert (await reconciler.reconcile_once()).republished_lost == 0
    assert job_id


async def test_a_stale_downloading_file_is_published_again_once_per_window(
    pool: asyncpg.Pool,
    redis: Redis,
    relay: OutboxRelay,
    reconciler: Reconciler,
    job: tuple[JobId, list[FileId]],
) -> None:
    job_id, files = job
    await _apply(pool, started(job_id, files[0]), started(job_id, files[1]))
    # The first has had no event for longer than the window; the second is still fresh.
    await pool.execute(
        "UPDATE files SET updated_at = now() - make_interval(secs => $2) WHERE id = $1",
        files[0],
        reconciler.stale_after_s + 5,
    )
    # Its command went out before it started, so before the window too.
    await pool.execute("UPDATE outbox SET created_at = now() - interval '1 hour'")
    assert await redis.exists(live_key(files[0]))  # its marker is no help: events were lost

    first = await reconciler.reconcile_once()
    await relay.relay_once()
    second = await reconciler.reconcile_once()

    assert first.republished_stale == 1
    assert first.republished_lost == 0
    assert (await _lane_files(redis)).count(files[0]) == 2
    assert (await _lane_files(redis)).count(files[1]) == 1
    # Its re-published command is still on its way: no pile of duplicates every pass.
    assert second.republished_stale == 0


async def test_the_stale_window_follows_the_claim_idle_time(
    pool: asyncpg.Pool, redis: Redis, settings: Settings
) -> None:
    assert Reconciler(pool, redis, settings).stale_after_s == 60.0  # claim_idle_s is 3 here
    slow = settings.replace(claim_idle_s=45.0)
    assert Reconciler(pool, redis, slow).stale_after_s == 180.0


# --- every command kind: processing, composites, exports ---------------------------------------

PROCESS_LANE = process_stream(lane_for(5))
BAND_NAMES = ("B04.tif", "B08.tif", "notes.txt")
NDVI = {"kind": "ndvi", "bands": {"red": "B04.tif", "nir": "B08.tif"}}


@pytest.fixture
async def processing(pool: asyncpg.Pool, relay: OutboxRelay) -> tuple[JobId, list[FileId]]:
    """A job of three downloaded files whose processing (metadata of each file and an NDVI
    composite of two of them) the relay has published."""
    submitted = await JobRepository(pool).submit(
        NewJob(
            user_id=await make_user(pool, "alice"),
            priority=5,
            files=[NewFile(url=f"http://127.0.0.1:9/{name}") for name in BAND_NAMES],
            options={"process": ["metadata"], "composites": [NDVI]},
        ),
        trace_headers={},
    )
    job_id = submitted.job_id
    rows = await pool.fetch("SELECT id FROM files WHERE job_id = $1 ORDER BY position", job_id)
    files = [FileId(str(row["id"])) for row in rows]
    assert await relay.relay_once() == 3
    for file_id, name in zip(files, BAND_NAMES, strict=True):
        await _apply(pool, started(job_id, file_id), downloaded(job_id, file_id, name=name))
    assert await relay.relay_once() == 4  # three ProcessFile, one BuildComposite
    return job_id, files


@pytest.fixture
async def export_id(
    pool: asyncpg.Pool,
    redis: Redis,
    relay: OutboxRelay,
    settings: Settings,
    job: tuple[JobId, list[FileId]],
) -> str:
    """An export of the job's three stored files, its BuildExport published by the relay."""
    job_id, files = job
    for file_id in files:
        await _apply(pool, started(job_id, file_id), downloaded(job_id, file_id))
    owner = UserId(str(await pool.fetchval("SELECT user_id FROM jobs WHERE id = $1", job_id)))
    created = await ExportRepository(pool).create(
        owner,
        job_ids=[uuid.UUID(job_id)],
        file_ids=[],
        file_paths=[],
        export_format="zip",
        include_metadata=True,
        storage=LocalStorage.from_url(settings.storage_url),
        max_bytes=settings.max_export_size_bytes,
    )
    await relay.relay_once()
    assert await redis.xlen(EXPORT_STREAM) == 1
    return created.export_id


def _artifact(
    job_id: JobId,
    kind: ArtifactKind,
    *,
    file_id: FileId | None = None,
    composite_id: str | None = None,
) -> ArtifactCreated:
    return ArtifactCreated(
        event_id=new_event_id(),
        job_id=job_id,
        at=time.time(),
        artifact_id=str(uuid.uuid4()),
        kind=kind,
        file_id=file_id,
        composite_id=composite_id,
        metadata={"crs": "EPSG:32633"} if kind == "metadata" else None,
    )


async def _process_commands(redis: Redis) -> list[ProcessFile | BuildComposite]:
    return [PROCESS_DECODER.decode(body) for body, _ in await stream_frames(redis, PROCESS_LANE)]


async def test_a_flush_brings_back_queued_processing_and_composites(
    pool: asyncpg.Pool,
    redis: Redis,
    relay: OutboxRelay,
    reconciler: Reconciler,
    woken: list[bool],
    processing: tuple[JobId, list[FileId]],
) -> None:
    _job_id, files = processing
    before = await stream_frames(redis, PROCESS_LANE)

    await redis.flushdb()
    report = await reconciler.reconcile_once()

    assert report.republished_lost == 4
    assert woken
    assert await relay.relay_once() == 4
    after = await stream_frames(redis, PROCESS_LANE)
    # The same commands, byte for byte: a ProcessFile per file and the composite.
    assert sorted(body for body, _ in after) == sorted(body for body, _ in before)
    commands = await _process_commands(redis)
    assert sorted(c.file_id for c in commands if isinstance(c, ProcessFile)) == sorted(files)
    assert [c.kind for c in commands if isinstance(c, BuildComposite)] == ["ndvi"]
    # Their markers came back with them: the next pass finds nothing lost.
    assert (await reconciler.reconcile_once()).republished_lost == 0


async def test_finished_processing_is_not_published_again(
    pool: asyncpg.Pool,
    redis: Redis,
    reconciler: Reconciler,
    processing: tuple[JobId, list[FileId]],
) -> None:
    job_id, files = processing
    composite = composite_key(job_id, 0)
    # The first file's processing and the composite completed; the other two are queued.
    await _apply(
        pool,
        _artifact(job_id, "metadata", file_id=files[0]),
        FileProcessed(event_id=new_event_id(), job_id=job_id, at=time.time(), file_id=files[0]),
        _artifact(job_id, "ndvi", composite_id=composite),
        CompositeFinished(
            event_id=new_event_id(), job_id=job_id, at=time.time(), composite_id=composite
        ),
    )
    assert (await _row(pool, "composites", composite))["status"] == "completed"

    await redis.flushdb()
    report = await reconciler.reconcile_once()

    assert report.republished_lost == 2
    queued = [PROCESS_DECODER.decode(row["body"]) for row in await _unsent(pool)]
    assert sorted(c.file_id for c in queued if isinstance(c, ProcessFile)) == sorted(files[1:])
    assert not [c for c in queued if isinstance(c, BuildComposite)]


async def test_processing_and_exports_whose_markers_exist_are_left_alone(
    pool: asyncpg.Pool,
    redis: Redis,
    reconciler: Reconciler,
    woken: list[bool],
    export_id: str,
    processing: tuple[JobId, list[FileId]],
) -> None:
    # Queued and published: a ProcessFile per file, a BuildComposite and a BuildExport.
    assert await redis.xlen(PROCESS_LANE) == 4
    assert await redis.xlen(EXPORT_STREAM) == 1

    report = await reconciler.reconcile_once()

    assert report.republished_lost == 0
    assert report.republished_stale == 0
    assert await _unsent(pool) == []
    assert not woken


async def test_one_lost_processing_command_is_published_again_alone(
    pool: asyncpg.Pool,
    redis: Redis,
    reconciler: Reconciler,
    processing: tuple[JobId, list[FileId]],
) -> None:
    _job_id, files = processing
    # AOF lost its last second for one command only: its marker went with it.
    await redis.delete(live_key(FILE_PROCESSING.key(files[2])))

    report = await reconciler.reconcile_once()

    assert report.lost == {"download": 0, "process": 1, "composite": 0, "export": 0, "task": 0}
    (row,) = await _unsent(pool)
    command = PROCESS_DECODER.decode(row["body"])
    assert isinstance(command, ProcessFile)
    assert command.file_id == files[2]
    assert row["command_key"] == FILE_PROCESSING.key(files[2])
    assert row["file_id"] is None  # file_id names download commands only


async def test_processing_of_an_ended_job_is_not_published_again(
    pool: asyncpg.Pool,
    redis: Redis,
    reconciler: Reconciler,
    processing: tuple[JobId, list[FileId]],
) -> None:
    await pool.execute("UPDATE jobs SET status = 'cancelled', finished_at = now()")
    await redis.flushdb()

    assert (await reconciler.reconcile_once()).republished_lost == 0
    assert await _unsent(pool) == []


async def test_a_flush_brings_back_an_accepted_export(
    pool: asyncpg.Pool,
    redis: Redis,
    relay: OutboxRelay,
    reconciler: Reconciler,
    export_id: str,
) -> None:
    (before,) = await stream_frames(redis, EXPORT_STREAM)

    await redis.flushdb()
    report = await reconciler.reconcile_once()

    assert report.republished_lost == 1
    assert await relay.relay_once() == 1
    (after,) = await stream_frames(redis, EXPORT_STREAM)
    assert after[0] == before[0]  # the same items, byte for byte
    assert EXPORT_DECODER.decode(after[0]).export_id == export_id
    assert (await reconciler.reconcile_once()).republished_lost == 0


@pytest.mark.parametrize("status", ["ready", "failed", "cancelled"])
async def test_an_ended_export_is_not_published_again(
    pool: asyncpg.Pool, redis: Redis, reconciler: Reconciler, export_id: str, status: str
) -> None:
    await pool.execute("UPDATE exports SET status = $2 WHERE id = $1", export_id, status)
    await redis.flushdb()

    assert (await reconciler.reconcile_once()).republished_lost == 0
    assert await _unsent(pool) == []


async def test_a_stale_building_export_is_published_again_once_per_window(
    pool: asyncpg.Pool,
    redis: Redis,
    relay: OutboxRelay,
    reconciler: Reconciler,
    export_id: str,
) -> None:
    await _apply(
        pool,
        ExportProgress(
            event_id=new_event_id(),
            export_id=export_id,
            at=time.time(),
            files_done=1,
            bytes_done=10,
        ),
    )
    # Building, then silent for longer than the window: its command or its events were lost.
    await pool.execute(
        "UPDATE exports SET updated_at = now() - make_interval(secs => $1)",
        reconciler.stale_after_s + 5,
    )
    await pool.execute("UPDATE outbox SET created_at = now() - interval '1 hour'")

    first = await reconciler.reconcile_once()
    await relay.relay_once()
    second = await reconciler.reconcile_once()

    assert (first.republished_stale, first.republished_lost) == (1, 0)
    assert await redis.xlen(EXPORT_STREAM) == 2
    assert second.republished_stale == 0


# --- job timeout ----------------------------------------------------------------------------


async def test_an_old_job_times_out_and_its_work_is_cancelled(
    pool: asyncpg.Pool,
    redis: Redis,
    reconciler: Reconciler,
    settings: Settings,
    woken: list[bool],
    job: tuple[JobId, list[FileId]],
) -> None:
    job_id, files = job
    await _apply(
        pool, started(job_id, files[0]), downloaded(job_id, files[0]), started(job_id, files[1])
    )
    await pool.execute(
        "UPDATE jobs SET created_at = now() - make_interval(secs => $1)",
        settings.job_timeout_s + 60,
    )
    listener = redis.pubsub()
    await listener.subscribe(CANCEL_CHANNEL)
    await listener.get_message(timeout=1)  # the subscribe confirmation

    report = await reconciler.reconcile_once()

    assert report.timed_out_jobs == 1
    error = f"job timed out after {int(settings.job_timeout_s)} s"
    assert [(await _row(pool, "files", f))["status"] for f in files] == [
        "completed",
        "failed",
        "failed",
    ]
    assert {(await _row(pool, "files", f))["error"] for f in files[1:]} == {error}
    ended = await _row(pool, "jobs", job_id)
    assert (ended["status"], ended["error"]) == ("partial", error)
    assert ended["finished_at"] is not None
    (row,) = await _unsent(pool)
    finished = EVENT_DECODER.decode(row["body"])
    assert isinstance(finished, JobFinished)
    assert (finished.status, finished.successful, finished.failed) == ("partial", 1, 2)
    assert woken
    # The same Redis path as a user's cancel: the flag for queued work, a message for running.
    assert await redis.get(cancelled_key(job_id)) == b"1"
    message = await listener.get_message(timeout=2)
    await listener.aclose()
    assert message is not None
    assert message["data"] == job_id.encode()
    # Ended once: the next pass finds nothing to do.
    assert (await reconciler.reconcile_once()).timed_out_jobs == 0


async def test_a_job_with_nothing_stored_fails_when_it_times_out(
    pool: asyncpg.Pool,
    reconciler: Reconciler,
    settings: Settings,
    job: tuple[JobId, list[FileId]],
) -> None:
    job_id, _files = job
    await pool.execute("UPDATE jobs SET created_at = now() - interval '2 days'")

    await reconciler.reconcile_once()

    assert (await _row(pool, "jobs", job_id))["status"] == "failed"


async def test_a_job_s_own_timeout_overrides_the_setting(
    pool: asyncpg.Pool, reconciler: Reconciler, settings: Settings
) -> None:
    owner = await make_user(pool, "alice")
    patient, _ = await submit_job(pool, owner, files=1)
    default, _ = await submit_job(pool, owner, files=1)
    hasty, _ = await submit_job(pool, owner, files=1)
    await pool.execute("UPDATE jobs SET created_at = now() - interval '36 hours'")
    await pool.execute("UPDATE jobs SET timeout_s = 3 * 86400 WHERE id = $1", patient)
    await pool.execute(
        "UPDATE jobs SET timeout_s = 86400, created_at = now() - interval '25 hours' WHERE id = $1",
        hasty,
    )

    report = await reconciler.reconcile_once()

    assert report.timed_out_jobs == 2
    assert (await _row(pool, "jobs", patient))["status"] == "pending"
    assert (await _row(pool, "jobs", default))["status"] == "failed"
    hasty_job = await _row(pool, "jobs", hasty)
    assert hasty_job["error"] == "job timed out after 86400 s"


# --- the loop around it ---------------------------------------------------------------------


async def test_only_one_gateway_runs_a_pass_at_a_time(
    pool: asyncpg.Pool, reconciler: Reconciler, job: tuple[JobId, list[FileId]]
) -> None:
    async with pool.acquire() as other_gateway:
        await other_gateway.execute("SELECT pg_advisory_lock($1)", RECONCILE_LOCK)
        skipped = await reconciler.reconcile_once()
        await other_gateway.execute("SELECT pg_advisory_unlock($1)", RECONCILE_LOCK)

    assert not skipped.ran
    assert (await reconciler.reconcile_once()).ran


async def test_a_pass_trims_what_every_group_is_done_with(
    redis: Redis, reconciler: Reconciler
) -> None:
    await reconciler.reconcile_once()  # creates the groups
    for n in range(4):
        await redis.xadd(EVENTS_STREAM, {b"__data__": b"%d" % n})
    read = await redis.xreadgroup(TRACKER_GROUP, "t", {EVENTS_STREAM: ">"}, count=3)
    ids = [entry_id for _s, entries in read for entry_id, _f in entries]
    await redis.xack(EVENTS_STREAM, TRACKER_GROUP, *ids[:2])

    report = await reconciler.reconcile_once()

    assert report.trimmed == 2
    assert await redis.xlen(EVENTS_STREAM) == 2  # one pending, one unread


async def test_the_gateway_runs_the_reconciler_in_its_lifespan(
    settings: Settings, auth: dict[str, str], redis: Redis
) -> None:
    app = create_app(settings.replace(reconcile_interval_s=0.2))
    async with AsyncTestClient(app=app) as client:
        response = await client.post(
            "/api/v1/downloads/download",
            json={"urls": ["http://127.0.0.1:9/a.tif"]},
            headers=auth,
        )
        assert response.status_code == 202, response.text

        async def on_the_lane() -> bool:
            return bool(await redis.xlen(LANE))

        await eventually(on_the_lane, what="the command on its lane")
        await redis.flushdb()
        await eventually(on_the_lane, what="the command to be published again")
        assert await redis.xinfo_groups(LANE)


# --- the upgrade ----------------------------------------------------------------------------


async def test_rows_queued_before_the_upgrade_keep_their_file(empty_database_url: str) -> None:
    """Migration 0002 fills in the file of unsent download rows, so none is published twice."""
    initial = (Path(services.gateway.migrations.__file__).parent / "0001_initial.sql").read_text()
    file_id, user, job = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    command = DownloadFile(
        job_id=JobId(str(job)),
        file_id=FileId(str(file_id)),
        user_id=UserId(str(user)),
        url="http://127.0.0.1:9/a",
    )
    connection = await asyncpg.connect(empty_database_url)
    try:
        # The database as 0001 left it, with work still in its outbox.
        await connection.execute(initial)
        await connection.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now());"
            " INSERT INTO schema_migrations (version) VALUES ('0001_initial')"
        )
        await connection.execute(
            "INSERT INTO outbox (stream, body, sent_at) VALUES"
            " ($1, $2, NULL), ($1, $2, now()), ($3, '{}'::bytea, NULL)",
            LANE,
            ENCODER.encode(command),
            EVENTS_STREAM,
        )

        # Later migrations follow; 0002 is the one under test.
        assert (await migrate(empty_database_url))[0] == "0002_crash_proof_delivery"

        rows = await connection.fetch("SELECT file_id FROM outbox ORDER BY id")
    finally:
        await connection.close()
    assert [row["file_id"] for row in rows] == [file_id, None, None]


async def test_rows_queued_before_the_upgrade_keep_their_command_key(
    empty_database_url: str,
) -> None:
    """Migration 0006 names the work of every unsent command row, and keeps each open export's
    command on its row, so nothing queued before the upgrade is taken for lost."""
    folder = Path(services.gateway.migrations.__file__).parent
    earlier = sorted(p for p in folder.glob("*.sql") if p.name < "0006")
    user, job, file_id, composite, export = (uuid.uuid4() for _ in range(5))
    owner, job_id, file = UserId(str(user)), JobId(str(job)), FileId(str(file_id))
    download = DownloadFile(job_id=job_id, file_id=file, user_id=owner, url="http://127.0.0.1:9/a")
    process = ProcessFile(
        job_id=job_id, file_id=file, user_id=owner, filepath="k", filename="n", steps=()
    )
    build = BuildComposite(
        job_id=job_id, composite_id=str(composite), user_id=owner, kind="ndvi", bands={}
    )
    export_body = ENCODER.encode(BuildExport(export_id=str(export), user_id=owner, format="zip"))
    connection = await asyncpg.connect(empty_database_url)
    try:
        # The database as 0005 left it, with work of every kind still in its outbox.
        for path in earlier:
            await connection.execute(path.read_text())
        await connection.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await connection.execute(
            "INSERT INTO schema_migrations (version) SELECT unnest($1::text[])",
            [path.stem for path in earlier],
        )
        await connection.execute("INSERT INTO users (id, name) VALUES ($1, 'alice')", user)
        await connection.execute(
            "INSERT INTO exports (id, user_id, format, include_metadata, file_count, total_bytes)"
            " VALUES ($1, $2, 'zip', true, 0, 0)",
            export,
            user,
        )
        await connection.execute(
            "INSERT INTO outbox (stream, body, file_id) VALUES"
            " ($1, $2, $3), ($4, $5, NULL), ($4, $6, NULL), ($7, $8, NULL), ($9, '{}', NULL)",
            LANE,
            ENCODER.encode(download),
            file_id,
            PROCESS_LANE,
            ENCODER.encode(process),
            ENCODER.encode(build),
            EXPORT_STREAM,
            export_body,
            EVENTS_STREAM,
        )

        assert (await migrate(empty_database_url))[0] == "0006_reconciled_commands"

        keys = [
            r["command_key"] for r in await connection.fetch("SELECT * FROM outbox ORDER BY id")
        ]
        command = await connection.fetchval("SELECT command FROM exports WHERE id = $1", export)
    finally:
        await connection.close()
    assert keys == [
        file,
        FILE_PROCESSING.key(file),
        COMPOSITES.key(str(composite)),
        EXPORTS.key(str(export)),
        None,
    ]
    assert command == export_body
