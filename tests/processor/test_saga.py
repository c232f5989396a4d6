"""Processing in the gateway's saga: commands queued by the tracker, fan-in of composites, a job's
end waiting for its processing, and artifacts in results and downloads (real PostgreSQL)."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import pytest

from services.gateway.jobs.lifecycle import lock_job, settle_job
from services.gateway.processing.queries import composite_key
from services.gateway.tracker import project
from services.processor.handlers import artifact_id
from shared.events import (
    EVENT_DECODER,
    PROCESS_DECODER,
    ArtifactCreated,
    BuildComposite,
    CompositeFinished,
    FileProcessed,
    JobFinished,
    ProcessFile,
)
from shared.ids import FileId, JobId, new_event_id
from shared.streams import EVENTS_STREAM, Lane, process_stream
from tests.gateway.support import downloaded, failed

if TYPE_CHECKING:
    from pathlib import Path

    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.events import PipelineEvent
    from tests.gateway.conftest import TokenFactory

API = "/api/v1/downloads"
STEPS = ["metadata", "thumbnail", "cog"]


async def _apply(pool: asyncpg.Pool, *events: PipelineEvent) -> None:
    async with pool.acquire() as connection:
        for event in events:
            await project(connection, event)


async def _submit(
    client: AsyncTestClient[Litestar], headers: dict[str, str], **body: Any
) -> tuple[JobId, list[FileId]]:
    response = await client.post(f"{API}/download", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job = JobId(response.json()["job_id"])
    return job, []


async def _files(pool: asyncpg.Pool, job: JobId) -> list[FileId]:
    rows = await pool.fetch("SELECT id FROM files WHERE job_id = $1 ORDER BY position", job)
    return [FileId(str(row["id"])) for row in rows]


async def _job(pool: asyncpg.Pool, job: JobId) -> dict[str, Any]:
    return dict(await pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job))


async def _process_rows(pool: asyncpg.Pool) -> list[ProcessFile | BuildComposite]:
    rows = await pool.fetch(
        "SELECT body FROM outbox WHERE stream LIKE 'downlink:process:%' ORDER BY id"
    )
    return [PROCESS_DECODER.decode(row["body"]) for row in rows]


async def _finished(pool: asyncpg.Pool) -> list[JobFinished]:
    rows = await pool.fetch("SELECT body FROM outbox WHERE stream = $1 ORDER BY id", EVENTS_STREAM)
    return [
        e for e in (EVENT_DECODER.decode(r["body"]) for r in rows) if isinstance(e, JobFinished)
    ]


def _artifact(
    job: JobId,
    kind: str,
    *,
    file_id: FileId | None = None,
    composite: str | None = None,
    data: bytes = b"",
    key: str | None = None,
) -> ArtifactCreated:
    owner = file_id or composite or ""
    return ArtifactCreated(
        event_id=new_event_id(),
        job_id=job,
        at=time.time(),
        artifact_id=artifact_id(owner, kind),
        kind=kind,  # type: ignore[arg-type]
        file_id=file_id,
        composite_id=composite,
        filepath=key,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest() if key else "",
        content_type="image/png" if key else None,
        metadata={"kind": kind},
    )


def _processed(job: JobId, file_id: FileId, **errors: str) -> FileProcessed:
    return FileProcessed(
        event_id=new_event_id(), job_id=job, at=time.time(), file_id=file_id, errors=errors
    )


def _composite_done(job: JobId, composite: str, error: str | None = None) -> CompositeFinished:
    return CompositeFinished(
        event_id=new_event_id(), job_id=job, at=time.time(), composite_id=composite, error=error
    )


# --- per-file processing ----------------------------------------------------------------------


async def test_a_download_queues_its_processing_on_the_jobs_lane(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job, _ = await _submit(
        client, auth, urls=["http://127.0.0.1:9/a/B04.tif"], priority=9, process=STEPS
    )
    (file_id,) = await _files(pool, job)
    event = downloaded(job, file_id, name="B04.tif")

    await _apply(pool, event, event)  # a replay queues nothing more

    (command,) = await _process_rows(pool)
    assert isinstance(command, ProcessFile)
    assert command.file_id == file_id
    assert command.filepath == event.filepath
    assert command.filename == "B04.tif"
    assert command.steps == ("metadata", "thumbnail", "cog")
    assert command.priority == 9
    stream = await pool.fetchval("SELECT stream FROM outbox WHERE stream LIKE 'downlink:process:%'")
    assert stream == process_stream(Lane.HIGH)
    # Every file is downloaded, but the job waits for its processing.
    assert (await _job(pool, job))["status"] == "in_progress"
    assert await _finished(pool) == []
    status = (await client.get(f"{API}/jobs/{job}", headers=auth)).json()
    assert status["progress"]["percentage"] == 50.0
    assert status["progress"]["processing"] == {
        "files_total": 1,
        "files_completed": 0,
        "files_failed": 0,
        "composites_total": 0,
        "composites_completed": 0,
        "composites_failed": 0,
    }


async def test_a_job_without_processing_queues_none(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job, _ = await _submit(client, auth, urls=["http://127.0.0.1:9/a.tif"])
    (file_id,) = await _files(pool, job)

    await _apply(pool, downloaded(job, file_id))

    assert await _process_rows(pool) == []
    assert (await _job(pool, job))["status"] == "completed"
    status = (await client.get(f"{API}/jobs/{job}", headers=auth)).json()
    assert "processing" not in status["progress"]


async def test_the_job_completes_once_processing_and_its_artifacts_are_in(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job, _ = await _submit(client, auth, urls=["http://127.0.0.1:9/B04.tif"], process=STEPS)
    (file_id,) = await _files(pool, job)
    await _apply(pool, downloaded(job, file_id, name="B04.tif"))
    artifacts = [
        _artifact(job, "metadata", file_id=file_id),
        _artifact(job, "thumbnail", file_id=file_id, data=b"png", key="u/a/t.png"),
        _artifact(job, "cog", file_id=file_id, data=b"tif", key="u/a/c.tif"),
    ]

    # The tracker may see the final event before the artifacts it follows: it waits for them.
    await _apply(pool, _processed(job, file_id), artifacts[0], artifacts[1])
    assert (await _job(pool, job))["status"] == "in_progress"
    await _apply(pool, artifacts[2], artifacts[2])

    assert (await _job(pool, job))["status"] == "completed"
    (finished,) = await _finished(pool)
    assert finished.status == "completed"
    row = await pool.fetchrow("SELECT * FROM files WHERE id = $1", file_id)
    assert row["processing_status"] == "completed"
    assert row["processing_error"] is None
    assert await pool.fetchval("SELECT count(*) FROM artifacts WHERE job_id = $1", job) == 3


async def test_failed_steps_are_named_and_the_download_stays(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job, _ = await _submit(client, auth, urls=["http://127.0.0.1:9/x.tif"], process=STEPS)
    (file_id,) = await _files(pool, job)
    error = "not a readable raster: 'x.tif' not recognized as being in a supported file format."

    await _apply(
        pool,
        downloaded(job, file_id, name="x.tif"),
        _artifact(job, "metadata", file_id=file_id),
        _processed(job, file_id, thumbnail=error, cog=error),
    )

    assert (await _job(pool, job))["status"] == "completed"  # the download succeeded
    result = (await client.get(f"{API}/jobs/{job}/result", headers=auth)).json()
    (entry,) = result["results"]
    assert entry["status"] == "completed"
    artifacts = entry["artifacts"]
    assert artifacts["status"] == "failed"
    assert artifacts["errors"] == {"thumbnail": error, "cog": error}
    assert artifacts["error"] == f"thumbnail: {error}; cog: {error}"
    assert artifacts["metadata"] == {"kind": "metadata"}
    assert artifacts["thumbnail"] is None


async def test_a_timed_out_job_stops_waiting_for_its_processing(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job, _ = await _submit(client, auth, urls=["http://127.0.0.1:9/a.tif"], process=STEPS)
    (file_id,) = await _files(pool, job)
    await _apply(pool, downloaded(job, file_id))

    # What the reconciler does to a job past its timeout.
    async with pool.acquire() as connection, connection.transaction():
        status = await lock_job(connection, job)
        assert status is not None
        await connection.execute(
            "UPDATE jobs SET error = 'job timed out after 5 s' WHERE id = $1", job
        )
        await settle_job(connection, job, status)

    assert (await _job(pool, job))["status"] == "completed"
    row = await pool.fetchrow("SELECT * FROM files WHERE id = $1", file_id)
    assert (row["processing_status"], row["processing_error"]) == (
        "failed",
        "job timed out after 5 s",
    )


# --- composites -------------------------------------------------------------------------------

BAND_URLS = [
    "http://127.0.0.1:9/tile/B04.tif",
    "http://127.0.0.1:9/tile/B08.tif",
    "http://127.0.0.1:9/tile/B03.tif",
]


async def test_a_composite_is_queued_once_when_its_last_band_is_in(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    bounds = [16.28, 45.10, 16.30, 45.13]
    job, _ = await _submit(
        client,
        auth,
        urls=BAND_URLS[:2],
        files=[{"url": BAND_URLS[2], "filename": "green.tif"}],
        composites=[
            {"kind": "ndvi", "bands": {"red": "B04.tif", "nir": "B08.tif"}, "bounds": bounds}
        ],
    )
    red, nir, green = await _files(pool, job)
    composite = composite_key(job, 0)

    await _apply(pool, downloaded(job, red, name="B04.tif"))
    assert await _process_rows(pool) == []
    assert (await client.get(f"{API}/jobs/{job}/result", headers=auth)).json()["composites"] == [
        {
            "composite_id": composite,
            "kind": "ndvi",
            "bands": {"red": "B04.tif", "nir": "B08.tif"},
            "bounds": bounds,
            "status": "pending",
            "error": None,
            "artifacts": [],
        }
    ]

    nir_event = downloaded(job, nir, name="B08.tif")
    await _apply(pool, nir_event, downloaded(job, green, name="green.tif"), nir_event)

    (command,) = await _process_rows(pool)
    assert isinstance(command, BuildComposite)
    assert command.composite_id == composite
    assert command.kind == "ndvi"
    assert command.bands == {"red": f"u/{job}/B04.tif", "nir": f"u/{job}/B08.tif"}
    assert command.bounds == tuple(bounds)
    assert (await _job(pool, job))["status"] == "in_progress"

    await _apply(
        pool,
        _composite_done(job, composite),
        _artifact(job, "ndvi", composite=composite, data=b"ndvi", key=f"u/{job}/ndvi.tif"),
    )

    assert (await _job(pool, job))["status"] == "completed"
    (entry,) = (await client.get(f"{API}/jobs/{job}/result", headers=auth)).json()["composites"]
    assert entry["status"] == "completed"
    (ndvi,) = entry["artifacts"]
    assert ndvi["kind"] == "ndvi"
    assert ndvi["download_url"] == f"{API}/files/{ndvi['file_id']}"


async def test_a_composite_whose_band_failed_fails_and_the_job_ends(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job, _ = await _submit(
        client,
        auth,
        urls=BAND_URLS[:2],
        composites=[{"kind": "ndvi", "bands": {"red": "B04.tif", "nir": "B08.tif"}}],
    )
    red, nir = await _files(pool, job)

    await _apply(pool, downloaded(job, red, name="B04.tif"), failed(job, nir))

    assert await _process_rows(pool) == []
    assert (await _job(pool, job))["status"] == "partial"
    (entry,) = (await client.get(f"{API}/jobs/{job}/result", headers=auth)).json()["composites"]
    assert entry["status"] == "failed"
    assert (
        entry["error"] == "band nir (B08.tif) was not downloaded: HTTP 404 from http://127.0.0.1:9/"
    )


async def test_a_failed_composite_build_ends_with_its_error(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job, _ = await _submit(
        client,
        auth,
        urls=BAND_URLS[:2],
        composites=[{"kind": "ndvi", "bands": {"red": "B04.tif", "nir": "B08.tif"}}],
    )
    red, nir = await _files(pool, job)
    composite = composite_key(job, 0)
    await _apply(pool, downloaded(job, red, name="B04.tif"), downloaded(job, nir, name="B08.tif"))

    await _apply(pool, _composite_done(job, composite, "bounds [1, 2, 3, 4] do not overlap"))

    assert (await _job(pool, job))["status"] == "completed"
    row = await pool.fetchrow("SELECT status, error FROM composites WHERE id = $1", composite)
    assert (row["status"], row["error"]) == ("failed", "bounds [1, 2, 3, 4] do not overlap")


async def test_an_artifact_of_another_job_is_ignored(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job, _ = await _submit(client, auth, urls=["http://127.0.0.1:9/a.tif"], process=STEPS)
    other, _ = await _submit(client, auth, urls=["http://127.0.0.1:9/b.tif"], process=STEPS)
    (file_id,) = await _files(pool, job)

    await _apply(pool, _artifact(other, "metadata", file_id=file_id))

    assert await pool.fetchval("SELECT count(*) FROM artifacts") == 0


# --- the API ----------------------------------------------------------------------------------


async def test_artifacts_download_by_id_for_their_owner_only(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    make_auth: TokenFactory,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    job, _ = await _submit(client, auth, urls=["http://127.0.0.1:9/B04.tif"], process=STEPS)
    (file_id,) = await _files(pool, job)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
    key = f"someone/artifacts/{job}/{file_id}/B04.thumbnail.png"
    (tmp_path / "storage" / key).parent.mkdir(parents=True)
    (tmp_path / "storage" / key).write_bytes(png)
    thumbnail = _artifact(job, "thumbnail", file_id=file_id, data=png, key=key)
    metadata = _artifact(job, "metadata", file_id=file_id)
    await _apply(pool, downloaded(job, file_id, name="B04.tif"), thumbnail, metadata)

    (entry,) = (await client.get(f"{API}/jobs/{job}/result", headers=auth)).json()["results"]
    view = entry["artifacts"]["thumbnail"]
    assert view["file_id"] == thumbnail.artifact_id
    assert view["filepath"] == key
    assert view["hash"] == thumbnail.sha256
    assert entry["artifacts"]["status"] == "pending"  # no FileProcessed yet

    response = await client.get(view["download_url"], headers=auth)
    assert response.status_code == 200
    assert response.content == png
    assert response.headers["content-type"] == "image/png"
    assert "B04.thumbnail.png" in response.headers["content-disposition"]
    ranged = await client.get(view["download_url"], headers={**auth, "Range": "bytes=0-7"})
    assert (ranged.status_code, ranged.content) == (206, png[:8])

    bob = await make_auth("bob")
    assert (await client.get(view["download_url"], headers=bob)).status_code == 404
    no_bytes = await client.get(f"{API}/files/{metadata.artifact_id}", headers=auth)
    assert no_bytes.status_code == 404


@pytest.mark.parametrize(
    ("composite", "field"),
    [
        (
            {"kind": "ndvi", "bands": {"red": "B04.tif", "nir": "B99.tif"}},
            "composites[0].bands.nir",
        ),
        ({"kind": "ndvi", "bands": {"red": "B04.tif"}}, "composites[0].bands"),
        (
            {
                "kind": "rgb",
                "bands": {"red": "B04.tif", "green": "B08.tif", "blue": "B04.tif", "x": "B04.tif"},
            },
            "composites[0].bands",
        ),
        (
            {
                "kind": "ndvi",
                "bands": {"red": "B04.tif", "nir": "B08.tif"},
                "bounds": [10, 5, 9, 6],
            },
            "composites[0].bounds",
        ),
        (
            {
                "kind": "ndvi",
                "bands": {"red": "B04.tif", "nir": "B08.tif"},
                "bounds": [10, 5, 11, 95],
            },
            "composites[0].bounds",
        ),
        (
            {"kind": "ndvi", "bands": {"red": "B04.tif", "nir": "B08.tif"}, "bounds": [1, 2, 3]},
            "bounds",
        ),
        ({"kind": "evi", "bands": {"red": "B04.tif"}}, "kind"),
    ],
)
async def test_bad_composites_are_refused_naming_the_field(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    composite: dict[str, Any],
    field: str,
) -> None:
    response = await client.post(
        f"{API}/download",
        json={"urls": BAND_URLS[:2], "composites": [composite]},
        headers=auth,
    )

    assert response.status_code == 400, response.text
    assert field in response.text
    assert await pool.fetchval("SELECT count(*) FROM jobs") == 0


async def test_bands_match_a_given_filename_or_the_urls_last_segment(
    client: AsyncTestClient[Litestar], auth: dict[str, str]
) -> None:
    response = await client.post(
        f"{API}/download",
        json={
            "urls": ["http://127.0.0.1:9/tile/B04.tif?token=1"],
            "files": [{"url": "http://127.0.0.1:9/download?id=8", "filename": "nir.tif"}],
            "composites": [{"kind": "ndvi", "bands": {"red": "B04.tif", "nir": "nir.tif"}}],
        },
        headers=auth,
    )

    assert response.status_code == 202, response.text
