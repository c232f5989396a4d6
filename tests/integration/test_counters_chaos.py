"""A job's counters stay exact through crashes: SIGKILL the downloader and the gateway mid-job.

The counters on the job row are moved by a trigger in the statement that changes a file; an event
projected twice, a file re-downloaded after a reclaim or a tracker killed mid-transaction must not
move them twice. After the chaos, the row, the status and the result must all equal a recount over
the files table, and every stored file must hash to what was served.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest

from tests.support import postgres_server

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Fast clocks so a crash costs seconds: reclaim after 2 s idle, the first retry after 0.2 s.
FAST = {
    "DOWNLINK_CLAIM_IDLE": "2",
    "DOWNLINK_RETRY_BACKOFF": "0.2",
    "DOWNLINK_RECONCILE_INTERVAL": "1",
    "DOWNLINK_SHUTDOWN_GRACE": "5",
}
FILES = 300
# Each good file trickles for about 0.2 s, so the job runs long enough to be hit mid-way.
RATE_BPS = 20_000
COUNTERS = (
    "files_downloading",
    "files_completed",
    "files_failed",
    "files_cancelled",
    "bytes_downloaded",
    "processing_total",
    "processing_completed",
    "processing_failed",
)
RECOUNT = """
SELECT count(*) AS total_files,
       count(*) FILTER (WHERE status = 'downloading') AS files_downloading,
       count(*) FILTER (WHERE status = 'completed') AS files_completed,
       count(*) FILTER (WHERE status = 'failed') AS files_failed,
       count(*) FILTER (WHERE status = 'cancelled') AS files_cancelled,
       coalesce(sum(bytes_downloaded), 0) AS bytes_downloaded,
       count(*) FILTER (WHERE processing_status IS NOT NULL) AS processing_total,
       count(*) FILTER (WHERE processing_status = 'completed') AS processing_completed,
       count(*) FILTER (WHERE processing_status = 'failed') AS processing_failed,
       coalesce(sum(size) FILTER (WHERE status = 'completed'), 0) AS completed_size
  FROM files WHERE job_id = $1
"""


@dataclass
class Served:
    """The job's URLs: each one's SHA-256 (None: it can only fail), and the flaky ones."""

    digests: dict[str, str | None] = field(default_factory=dict)
    # A flaky file fails its first tries and a SIGKILL mid-transfer costs a try too, so it may
    # run out of tries: it ends completed or failed, and either must be counted right.
    flaky: set[str] = field(default_factory=set)


def _serve(file_server: FileServer, rng: random.Random) -> Served:
    """Mostly good files, some 404s (fail at once), flaky 500s (retried) and dead 500s (fail)."""
    served = Served()
    for index in range(FILES):
        roll = rng.random()
        name = f"f{index:03d}.bin"
        if roll < 0.08:
            served.digests[file_server.status_url(404, n=index)] = None
        elif roll < 0.14:
            served.digests[file_server.status_url(500, n=index)] = None
        else:
            _, digest = file_server.add_file(name, size=rng.randrange(1024, 6144))
            if roll < 0.24:
                url = file_server.flaky_url(name, fail=rng.choice((1, 2)), rate=RATE_BPS)
                served.flaky.add(url)
            else:
                url = file_server.file_url(name, rate=RATE_BPS)
            served.digests[url] = digest
    return served


def _done(client: httpx.Client, job_id: str) -> int:
    """Files of the job in a final state, as its status reports them (0 while unreachable)."""
    try:
        progress = client.get(f"/api/v1/downloads/jobs/{job_id}", timeout=2).json()["progress"]
    except (httpx.HTTPError, ValueError, KeyError):  # the gateway is down or starting
        return 0
    return int(progress["completed"]) + int(progress["failed"])


def _chaos(stack: Pipeline, client: httpx.Client, job_id: str, rng: random.Random) -> list[str]:
    """SIGKILL the downloader and the gateway once or twice each, at random points of the job."""
    victims = ["downloader"] * rng.randint(1, 2) + ["gateway"] * rng.randint(1, 2)
    rng.shuffle(victims)
    points = sorted(rng.uniform(0.05, 0.75) * FILES for _ in victims)
    done: list[str] = []
    deadline = time.monotonic() + 40
    for victim, point in zip(victims, points, strict=True):
        while _done(client, job_id) < point:
            if time.monotonic() > deadline:
                pytest.fail(f"the job stalled before {point:.0f} files; chaos so far: {done}")
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.3))  # off the poll's beat
        if victim == "gateway":
            assert stack.gateway is not None
            stack.gateway.kill()
            stack.gateway.wait(timeout=10)
            time.sleep(rng.uniform(0, 1))  # files keep finishing while no tracker runs
            stack.start_gateway()
        else:
            killed = stack.downloaders.pop()
            killed.kill()
            killed.wait(timeout=10)
            stack.start_downloader(DOWNLINK_PER_HOST_CONCURRENCY="6")
        done.append(f"{victim}@{point:.0f}")
    return done


async def _row_and_recount(database_url: str, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            f"SELECT total_files, {', '.join(COUNTERS)} FROM jobs WHERE id = $1", job_id
        )
        recount = await connection.fetchrow(RECOUNT, job_id)
    finally:
        await connection.close()
    assert row is not None
    assert recount is not None
    return dict(row), dict(recount)


def _sha256(path: os.PathLike[str]) -> str:
    with open(path, "rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def _check_files(
    results: list[dict[str, Any]], served: Served, stack: Pipeline, context: str
) -> None:
    """Each file ended as its URL allows, and each stored one holds the served bytes."""
    assert sorted(item["url"] for item in results) == sorted(served.digests), context
    for item in results:
        expected = served.digests[item["url"]]
        if expected is None or (item["url"] in served.flaky and item["status"] == "failed"):
            assert item["status"] == "failed", (item, context)
            continue
        # A plain file survives two kills mid-transfer: two of its three tries.
        assert (item["status"], item["hash"]) == ("completed", expected), (item, context)
        assert _sha256(stack.storage_root / item["filepath"]) == expected, (item, context)


def test_counters_equal_a_recount_after_killing_the_downloader_and_the_gateway(
    pipeline_factory: PipelineFactory,
    file_server: FileServer,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    served = _serve(file_server, rng)
    stack = pipeline_factory(**FAST)
    stack.start_downloader(DOWNLINK_PER_HOST_CONCURRENCY="6")
    alice = stack.client("alice")
    response = alice.post("/api/v1/downloads/download", json={"urls": list(served.digests)})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    chaos = _chaos(stack, alice, job_id, rng)
    status = stack.wait_job(alice, job_id, timeout=45)
    context = f"seed {seed}, chaos {chaos}"

    row, recount = postgres_server.run_async(lambda: _row_and_recount(database_url, job_id))
    assert {c: row[c] for c in COUNTERS} == {c: recount[c] for c in COUNTERS}, context
    assert row["total_files"] == recount["total_files"] == FILES, context
    assert (recount["files_downloading"], recount["files_cancelled"]) == (0, 0), context
    assert status["status"] == "partial", context
    progress = status["progress"]
    assert (progress["total"], progress["completed"], progress["failed"]) == (
        FILES,
        recount["files_completed"],
        recount["files_failed"],
    ), context
    assert progress["bytes_downloaded"] == recount["bytes_downloaded"], context

    result = stack.result(alice, job_id)
    assert result["summary"] == {
        "total_requested": FILES,
        "successful": recount["files_completed"],
        "failed": recount["files_failed"],
        "total_size": recount["completed_size"],
    }, context
    _check_files(result["results"], served, stack, context)
    with capsys.disabled():
        print(
            f"\ncounters chaos: {context}; {recount['files_completed']} completed, "
            f"{recount['files_failed']} failed"
        )
