"""The export routes: selection and safety, the outbox command, status, download, cancel, the
tracker's projection of export events and automatic exports at a job's end."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from services.gateway.app import create_app
from services.gateway.jobs.queries import JobRepository
from services.gateway.jobs.records import NewFile, NewJob
from services.gateway.tracker import project
from shared.broker import create_broker
from shared.events import (
    EXPORT_DECODER,
    BuildExport,
    ExportFailed,
    ExportProgress,
    ExportReady,
    FileDownloaded,
)
from shared.ids import EventId, FileId, JobId, UserId, new_event_id
from shared.storage.local import LocalStorage
from shared.streams import EVENTS_STREAM, EXPORT_CANCEL_CHANNEL, EXPORT_STREAM, export_cancelled_key
from tests.gateway.support import eventually, failed, started, stream_frames, user_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg
    from litestar import Litestar

    from shared.events import PipelineEvent
    from shared.settings import Settings
    from tests.gateway.conftest import TokenFactory

EXPORT = "/api/v1/downloads/export"


def _status_url(export_id: str) -> str:
    return f"/api/v1/downloads/exports/{export_id}"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage.from_url(settings.storage_url)


class Stored:
    """A job of a user with some files stored, as the downloader and the tracker leave them."""

    def __init__(self, user: UserId, job: JobId, files: list[FileId], keys: list[str]) -> None:
        self.user = user
        self.job = job
        self.files = files
        self.keys = keys


async def _apply(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)


async def store_job(
    pool: asyncpg.Pool,
    storage: LocalStorage,
    name: str,
    *,
    count: int = 3,
    stored: int | None = None,
    options: dict[str, Any] | None = None,
    names: list[str] | None = None,
) -> Stored:
    """Submit a job of `count` files for user `name` and store the first `stored` of them
    (the rest stay pending)."""
    owner = await user_id(pool, name)
    submitted = await JobRepository(pool).submit(
        NewJob(
            user_id=owner,
            priority=5,
            files=[NewFile(url=f"http://127.0.0.1:9/f{n}") for n in range(count)],
            options=options or {},
        ),
        trace_headers={},
    )
    job = submitted.job_id
    rows = await pool.fetch("SELECT id FROM files WHERE job_id = $1 ORDER BY position", job)
    files = [FileId(str(r["id"])) for r in rows]
    keys = []
    for index, file_id in enumerate(files[: count if stored is None else stored]):
        filename = names[index] if names else f"scene_{index}.tif"
        data = f"{name} file {index} ".encode() * (100 + index)
        key = f"{owner}/{job}/{filename}"
        path = storage.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        keys.append(key)
        await _apply(
            pool,
            started(job, file_id),
            FileDownloaded(
                event_id=new_event_id(),
                job_id=job,
                at=time.time(),
                file_id=file_id,
                filename=filename,
                filepath=key,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            ),
        )
    return Stored(owner, job, files, keys)


async def _published_commands(redis: Redis, count: int) -> list[BuildExport]:
    async def arrived() -> bool:
        return int(await redis.xlen(EXPORT_STREAM)) >= count

    await eventually(arrived, what=f"{count} BuildExport commands on {EXPORT_STREAM}")
    return [EXPORT_DECODER.decode(body) for body, _ in await stream_frames(redis, EXPORT_STREAM)]


async def _count_exports(pool: asyncpg.Pool) -> tuple[int, int]:
    exports = await pool.fetchval("SELECT count(*) FROM exports")
    outbox = await pool.fetchval("SELECT count(*) FROM outbox WHERE stream = $1", EXPORT_STREAM)
    return exports, outbox


# --- creating exports -----------------------------------------------------------------------


async def test_exporting_a_job_queues_one_command_with_its_stored_files(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
    redis: Redis,
) -> None:
    alice = await store_job(pool, storage, "alice", count=4, stored=3)

    response = await client.post(
        EXPORT, json={"job_ids": [alice.job], "export_format": "tar.gz"}, headers=auth
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["file_count"] == 3
    [command] = await _published_commands(redis, 1)
    assert command.export_id == body["export_id"]
    assert command.user_id == alice.user
    assert command.format == "tar.gz"
    assert command.include_metadata is True
    assert [item.filepath for item in command.items] == alice.keys
    assert [item.arcname for item in command.items] == [
        f"{alice.job}/scene_{n}.tif" for n in range(3)
    ]
    assert all(len(item.sha256) == 64 and item.url for item in command.items)
    assert body["total_bytes"] == sum(item.size for item in command.items)
    assert [job["job_id"] for job in command.jobs] == [alice.job]
    assert command.jobs[0]["status"] == "in_progress"

    status = (await client.get(_status_url(body["export_id"]), headers=auth)).json()
    assert status["status"] == "pending"
    assert status["format"] == "tar.gz"
    assert status["file_count"] == 3
    assert status["download_url"] is None
    assert status["progress"] == {"files_done": 0, "bytes_done": 0, "percentage": 0.0}


async def test_file_ids_and_file_paths_select_exactly_those_files(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
    redis: Redis,
) -> None:
    alice = await store_job(pool, storage, "alice", count=4)
    absolute = str(storage.root / alice.keys[3])  # inside alice's own area: accepted

    response = await client.post(
        EXPORT,
        json={
            "file_ids": [alice.files[0], alice.files[0]],
            "file_paths": [alice.keys[1], absolute],
            "include_metadata": False,
        },
        headers=auth,
    )

    assert response.status_code == 202, response.text
    [command] = await _published_commands(redis, 1)
    assert [item.file_id for item in command.items] == [
        alice.files[0],
        alice.files[1],
        alice.files[3],
    ]
    assert command.format == "zip"
    assert command.include_metadata is False


async def test_same_names_from_two_jobs_get_distinct_arcnames(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
    redis: Redis,
) -> None:
    first = await store_job(pool, storage, "alice", count=2, names=["B04.tif", "b04.TIF"])
    second = await store_job(pool, storage, "alice", count=1, names=["B04.tif"])

    response = await client.post(EXPORT, json={"job_ids": [first.job, second.job]}, headers=auth)

    assert response.status_code == 202, response.text
    [command] = await _published_commands(redis, 1)
    assert [item.arcname for item in command.items] == [
        f"{first.job}/B04.tif",
        f"{first.job}/b04_2.TIF",  # the same name to a case-insensitive filesystem
        f"{second.job}/B04.tif",
    ]


@pytest.mark.parametrize(
    ("make_path", "status", "words"),
    [
        (lambda a, b, root: f"{a.keys[0]}/../../{b.keys[0]}", 400, "'..'"),
        (lambda a, b, root: "../" + b.keys[0], 400, "'..'"),
        (lambda a, b, root: f"{a.user}/./{a.job}/scene_0.tif", 400, "'.'"),
        (lambda a, b, root: "/etc/passwd", 403, "outside your storage area"),
        (lambda a, b, root: str(root / b.keys[0]), 403, "outside your storage area"),
        (lambda a, b, root: str(root / a.keys[0]) + "/../../x", 400, "'..'"),
        (lambda a, b, root: b.keys[0], 404, "not one of your files"),
        (lambda a, b, root: f"{a.user}/{a.job}/nothing.tif", 404, "not one of your files"),
        (lambda a, b, root: f"{a.user}//{a.job}/scene_0.tif", 400, "empty segments"),
    ],
)
async def test_paths_outside_the_callers_files_are_refused_and_nothing_is_written(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
    redis: Redis,
    make_path: Any,
    status: int,
    words: str,
) -> None:
    alice = await store_job(pool, storage, "alice")
    bob = await store_job(pool, storage, "bob")
    bad = make_path(alice, bob, storage.root)

    response = await client.post(EXPORT, json={"file_paths": [alice.keys[1], bad]}, headers=auth)

    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    if status != 404:
        assert "file_paths[1]" in response.json()["detail"]
    assert await _count_exports(pool) == (0, 0)
    assert await redis.xlen(EXPORT_STREAM) == 0


async def test_symbolic_links_are_refused(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
) -> None:
    alice = await store_job(pool, storage, "alice")
    bob = await store_job(pool, storage, "bob")
    # A link planted in alice's area, pointing at bob's file.
    link = storage.root / alice.user / alice.job / "link.tif"
    link.symlink_to(storage.root / bob.keys[0])
    by_path = await client.post(
        EXPORT, json={"file_paths": [f"{alice.user}/{alice.job}/link.tif"]}, headers=auth
    )
    # A stored file of alice's swapped for a link after the download.
    swapped = storage.root / alice.keys[0]
    swapped.unlink()
    swapped.symlink_to(storage.root / bob.keys[0])
    by_job = await client.post(EXPORT, json={"job_ids": [alice.job]}, headers=auth)
    # A linked folder on the way.
    (storage.root / alice.user / "elsewhere").symlink_to(storage.root / bob.user)
    by_folder = await client.post(
        EXPORT,
        json={"file_paths": [f"{alice.user}/elsewhere/{bob.job}/scene_0.tif"]},
        headers=auth,
    )

    for response in (by_path, by_job, by_folder):
        assert response.status_code == 403, response.text
        assert "symbolic link" in response.json()["detail"]
    assert await _count_exports(pool) == (0, 0)


async def test_other_users_jobs_files_and_exports_answer_404(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    make_auth: TokenFactory,
    pool: asyncpg.Pool,
    storage: LocalStorage,
) -> None:
    bob_auth = await make_auth("bob")
    bob = await store_job(pool, storage, "bob")
    bobs_export = await client.post(EXPORT, json={"job_ids": [bob.job]}, headers=bob_auth)
    assert bobs_export.status_code == 202
    export_id = bobs_export.json()["export_id"]

    attempts = [
        await client.post(EXPORT, json={"job_ids": [bob.job]}, headers=auth),
        await client.post(EXPORT, json={"file_ids": [bob.files[0]]}, headers=auth),
        await client.get(_status_url(export_id), headers=auth),
        await client.get(f"{_status_url(export_id)}/download", headers=auth),
        await client.post(f"{_status_url(export_id)}/cancel", headers=auth),
    ]

    assert [r.status_code for r in attempts] == [404] * 5
    assert await _count_exports(pool) == (1, 1)  # bob's own, nothing of alice's


async def test_unstored_files_and_empty_selections_answer_409(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
) -> None:
    alice = await store_job(pool, storage, "alice", count=3, stored=1)
    await _apply(pool, failed(alice.job, alice.files[2]))

    pending = await client.post(EXPORT, json={"file_ids": [alice.files[1]]}, headers=auth)
    failing = await client.post(EXPORT, json={"file_ids": [alice.files[2]]}, headers=auth)
    empty_job = await store_job(pool, storage, "alice", count=2, stored=0)
    nothing = await client.post(EXPORT, json={"job_ids": [empty_job.job]}, headers=auth)

    assert pending.status_code == failing.status_code == nothing.status_code == 409
    assert "pending" in pending.json()["detail"]
    assert "failed" in failing.json()["detail"]
    assert "no stored file" in nothing.json()["detail"]
    assert await _count_exports(pool) == (0, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "job_ids, file_ids, file_paths"),
        ({"job_ids": ["not-a-uuid"]}, "job_ids"),
        ({"job_ids": [str(uuid.uuid4())], "export_format": "rar"}, "export_format"),
        ({"job_ids": [str(uuid.uuid4())], "format": "zip"}, "format"),
        ({"file_paths": [""]}, "file_paths"),
    ],
)
async def test_bad_bodies_answer_400_naming_the_field(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    body: dict[str, Any],
    field: str,
) -> None:
    response = await client.post(EXPORT, json=body, headers=auth)
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]
    assert await _count_exports(pool) == (0, 0)


async def test_an_export_over_the_size_limit_answers_413(
    settings: Settings,
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
) -> None:
    alice = await store_job(pool, storage, "alice", count=3)
    small = create_app(settings.replace(max_export_size_bytes=2000))
    async with AsyncTestClient(app=small) as client:
        response = await client.post(EXPORT, json={"job_ids": [alice.job]}, headers=auth)
        one = await client.post(EXPORT, json={"file_ids": [alice.files[0]]}, headers=auth)

    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "DOWNLINK_MAX_EXPORT_SIZE" in detail
    assert "2000 bytes" in detail
    assert one.status_code == 202  # a smaller selection fits
    assert await _count_exports(pool) == (1, 1)


# --- status, projection, download -----------------------------------------------------------


async def _create(client: AsyncTestClient[Litestar], auth: dict[str, str], job: JobId) -> str:
    response = await client.post(EXPORT, json={"job_ids": [job]}, headers=auth)
    assert response.status_code == 202, response.text
    export_id: str = response.json()["export_id"]
    return export_id


def _ready(export_id: str, key: str, data: bytes, event_id: str | None = None) -> ExportReady:
    return ExportReady(
        event_id=EventId(event_id or new_event_id()),
        export_id=export_id,
        at=time.time(),
        filepath=key,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        file_count=3,
    )


async def test_progress_then_ready_then_the_archive_downloads_with_ranges(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
) -> None:
    alice = await store_job(pool, storage, "alice")
    export_id = await _create(client, auth, alice.job)
    url = _status_url(export_id)
    assert (await client.get(f"{url}/download", headers=auth)).status_code == 409

    total = (await client.get(url, headers=auth)).json()["total_bytes"]
    await _apply(
        pool,
        ExportProgress(
            event_id=new_event_id(), export_id=export_id, at=time.time(), files_done=2,
            bytes_done=total // 2,
        ),
        ExportProgress(  # late and out of order: progress never goes back
            event_id=new_event_id(), export_id=export_id, at=time.time(), files_done=1,
            bytes_done=10,
        ),
    )  # fmt: skip
    building = (await client.get(url, headers=auth)).json()
    assert building["status"] == "building"
    assert building["progress"]["files_done"] == 2
    assert building["progress"]["percentage"] == pytest.approx(50.0, abs=0.1)

    archive = bytes(range(256)) * 40
    key = f"{alice.user}/exports/{export_id}.zip"
    (storage.root / key).parent.mkdir(parents=True)
    (storage.root / key).write_bytes(archive)
    ready_event = _ready(export_id, key, archive)
    await _apply(pool, ready_event, ready_event)  # a replay changes nothing
    ready = (await client.get(url, headers=auth)).json()
    assert ready["status"] == "ready"
    assert ready["size"] == len(archive)
    assert ready["hash"] == hashlib.sha256(archive).hexdigest()
    assert ready["download_url"] == f"{url}/download"
    assert ready["progress"] == {"files_done": 3, "bytes_done": total, "percentage": 100.0}
    assert ready["finished_at"] is not None

    whole = await client.get(ready["download_url"], headers=auth)
    assert whole.status_code == 200
    assert whole.content == archive
    assert whole.headers["content-type"] == "application/zip"
    assert whole.headers["etag"] == f'"{ready["hash"]}"'
    assert f"export-{export_id}.zip" in whole.headers["content-disposition"]
    part = await client.get(ready["download_url"], headers={**auth, "Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == archive[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(archive)}"
    stale = await client.get(
        ready["download_url"], headers={**auth, "Range": "bytes=0-9", "If-Range": '"old"'}
    )
    assert stale.status_code == 200
    beyond = await client.get(ready["download_url"], headers={**auth, "Range": "bytes=99999-"})
    assert beyond.status_code == 416

    # A failure reported after the export is ready changes nothing: state only moves forward.
    await _apply(
        pool,
        ExportFailed(event_id=new_event_id(), export_id=export_id, at=time.time(), error="late"),
    )
    assert (await client.get(url, headers=auth)).json()["status"] == "ready"
    (storage.root / key).unlink()
    gone = await client.get(ready["download_url"], headers=auth)
    assert gone.status_code == 404


async def test_a_failed_export_says_why(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
) -> None:
    alice = await store_job(pool, storage, "alice")
    export_id = await _create(client, auth, alice.job)
    await _apply(
        pool,
        ExportFailed(
            event_id=new_event_id(),
            export_id=export_id,
            at=time.time(),
            error="export of 9 bytes is over the 1-byte limit (DOWNLINK_MAX_EXPORT_SIZE)",
        ),
    )
    status = (await client.get(_status_url(export_id), headers=auth)).json()
    assert status["status"] == "failed"
    assert "DOWNLINK_MAX_EXPORT_SIZE" in status["error"]
    assert (await client.get(f"{_status_url(export_id)}/download", headers=auth)).status_code == 409


async def test_the_tracker_projects_export_events_from_the_stream(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
    settings: Settings,
) -> None:
    alice = await store_job(pool, storage, "alice")
    export_id = await _create(client, auth, alice.job)
    broker = create_broker(settings.redis_url)
    await broker.connect()
    try:
        await broker.publish(
            _ready(export_id, f"{alice.user}/exports/x.zip", b"z"), stream=EVENTS_STREAM
        )
    finally:
        await broker.stop()

    async def ready() -> bool:
        body = (await client.get(_status_url(export_id), headers=auth)).json()
        return bool(body["status"] == "ready")

    await eventually(ready, timeout_s=10, what="the tracker to project ExportReady")


# --- cancel ---------------------------------------------------------------------------------


async def test_cancel_stops_an_export_and_tells_the_exporters(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
    redis: Redis,
) -> None:
    alice = await store_job(pool, storage, "alice")
    export_id = await _create(client, auth, alice.job)
    url = _status_url(export_id)
    async with redis.pubsub() as pubsub:
        await pubsub.subscribe(EXPORT_CANCEL_CHANNEL)
        await pubsub.get_message(timeout=1)  # the subscription's confirmation
        response = await client.post(f"{url}/cancel", json={"reason": "wrong scenes"}, headers=auth)
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)

    assert response.status_code == 200, response.text
    assert response.json() == {"export_id": export_id, "status": "cancelled"}
    assert message is not None
    assert message["data"].decode() == export_id
    assert await redis.exists(export_cancelled_key(export_id))
    status = (await client.get(url, headers=auth)).json()
    assert (status["status"], status["error"]) == ("cancelled", "wrong scenes")
    again = await client.post(f"{url}/cancel", headers=auth)
    assert again.status_code == 409
    # An archive that was finished anyway does not revive the export.
    await _apply(pool, _ready(export_id, f"{alice.user}/exports/{export_id}.zip", b"x"))
    assert (await client.get(url, headers=auth)).json()["status"] == "cancelled"


async def test_an_ended_export_cannot_be_cancelled(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
) -> None:
    alice = await store_job(pool, storage, "alice")
    export_id = await _create(client, auth, alice.job)
    await _apply(pool, _ready(export_id, f"{alice.user}/exports/{export_id}.zip", b"x"))
    response = await client.post(f"{_status_url(export_id)}/cancel", headers=auth)
    assert response.status_code == 409
    assert "ready" in response.json()["detail"]


# --- automatic exports and artifacts --------------------------------------------------------


async def test_a_job_that_asked_for_an_export_gets_one_when_it_ends(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
    redis: Redis,
) -> None:
    options = {"export": {"format": "tar.gz", "include_metadata": False}}
    alice = await store_job(pool, storage, "alice", count=3, stored=2, options=options)
    result = (await client.get(f"/api/v1/downloads/jobs/{alice.job}/result", headers=auth)).json()
    assert result["export"] is None  # not before the job ended
    assert await _count_exports(pool) == (0, 0)

    await _apply(pool, failed(alice.job, alice.files[2]))  # the last file ends: partial

    result = (await client.get(f"/api/v1/downloads/jobs/{alice.job}/result", headers=auth)).json()
    assert result["status"] == "partial"
    export = result["export"]
    assert export["status"] == "pending"
    assert export["download_url"] is None
    row = await pool.fetchrow("SELECT * FROM exports WHERE id = $1", export["export_id"])
    assert str(row["job_id"]) == alice.job
    assert (row["format"], row["include_metadata"], row["file_count"]) == ("tar.gz", False, 2)
    [command] = await _published_commands(redis, 1)
    assert command.export_id == export["export_id"]
    assert [item.file_id for item in command.items] == alice.files[:2]
    status = (await client.get(_status_url(export["export_id"]), headers=auth)).json()
    assert status["job_id"] == alice.job

    key = f"{alice.user}/exports/{export['export_id']}.tar.gz"
    await _apply(pool, _ready(export["export_id"], key, b"archive"))
    result = (await client.get(f"/api/v1/downloads/jobs/{alice.job}/result", headers=auth)).json()
    assert result["export"]["status"] == "ready"
    assert result["export"]["download_url"].endswith(f"{export['export_id']}/download")


async def test_no_export_for_a_job_without_the_option_or_without_stored_files(
    pool: asyncpg.Pool, storage: LocalStorage
) -> None:
    await store_job(pool, storage, "alice", count=2)
    nothing_stored = await store_job(
        pool, storage, "alice", count=1, stored=0, options={"export": {"format": "zip"}}
    )
    await _apply(pool, failed(nothing_stored.job, nothing_stored.files[0]))
    assert await _count_exports(pool) == (0, 0)


async def test_artifacts_and_processing_metadata_join_their_files(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    storage: LocalStorage,
    redis: Redis,
) -> None:
    if not await pool.fetchval("SELECT to_regclass('artifacts') IS NOT NULL"):
        pytest.skip("no artifacts table (processing migration) in this tree")
    alice = await store_job(pool, storage, "alice", count=2)
    thumb_key = f"{alice.user}/{alice.job}/artifacts/scene_0_thumb.png"
    (storage.root / thumb_key).parent.mkdir(parents=True)
    (storage.root / thumb_key).write_bytes(b"\x89PNG thumbnail")
    metadata = {"crs": "EPSG:32632", "bounds_wgs84": [10.3, 45.9, 11.7, 46.9]}
    thumb_id, metadata_id = uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO artifacts (id, job_id, file_id, kind, filepath, size, sha256, metadata)"
        " VALUES ($1, $3, $4, 'thumbnail', $5, 14, $6, NULL),"  # 14: the bytes above
        " ($2, $3, $4, 'metadata', NULL, 0, NULL, $7)",
        thumb_id,
        metadata_id,
        alice.job,
        alice.files[0],
        thumb_key,
        hashlib.sha256(b"\x89PNG thumbnail").hexdigest(),
        metadata,
    )

    by_job = await client.post(EXPORT, json={"job_ids": [alice.job]}, headers=auth)
    by_id = await client.post(EXPORT, json={"file_ids": [str(thumb_id)]}, headers=auth)

    assert by_job.status_code == by_id.status_code == 202, by_job.text + by_id.text
    job_command, id_command = await _published_commands(redis, 2)
    scene, _, thumbnail = job_command.items
    assert scene.metadata == metadata
    assert (thumbnail.kind, thumbnail.source_file_id) == ("thumbnail", alice.files[0])
    assert thumbnail.arcname == f"{alice.job}/artifacts/scene_0_thumb.png"
    assert [item.file_id for item in id_command.items] == [str(thumb_id)]


async def test_export_routes_need_a_token(client: AsyncTestClient[Litestar]) -> None:
    export_id = uuid.uuid4()
    responses = [
        await client.post(EXPORT, json={"job_ids": [str(uuid.uuid4())]}),
        await client.get(_status_url(str(export_id))),
        await client.get(f"{_status_url(str(export_id))}/download"),
        await client.post(f"{_status_url(str(export_id))}/cancel"),
    ]
    assert [r.status_code for r in responses] == [401] * 4
    await asyncio.sleep(0)
