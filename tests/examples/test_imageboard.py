"""The image board's IQDB and rating jobs (examples/imageboard) run by a real worker."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest
from PIL import Image

from examples.imageboard import tasks as imageboard
from tests.tasks.conftest import ROOT, enqueue, start_worker, wait_task

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline
    from tests.support.fake_apis import IqdbIndex

pytestmark = pytest.mark.integration

SCHEMA_SQL = ROOT / "examples" / "imageboard" / "schema.sql"
VOTES = {1: [5, 5, 4], 2: [1, 2, 2, 3, 1], 3: [4]}


def _worker(stack: Pipeline) -> None:
    start_worker(stack, "--tasks", "examples.imageboard.tasks", "--max-jobs", "10")


def test_iqdb_gets_the_images_bytes_and_a_503_is_retried_after_5_s(
    stack: Pipeline, iqdb: IqdbIndex, tmp_path: Path
) -> None:
    _worker(stack)
    alice = stack.client("alice")
    image = tmp_path / "post-7.png"
    Image.new("RGB", (64, 48), (200, 30, 90)).save(image)
    sha256 = hashlib.sha256(image.read_bytes()).hexdigest()
    iqdb.fail_next(1, 503)
    began = time.monotonic()
    task_id = enqueue(
        alice, "add_to_iqdb", args={"image_id": 7, "path": str(image), "iqdb_url": iqdb.url}
    )
    done = wait_task(alice, task_id, timeout=30)
    assert (done["status"], done["attempts"]) == ("completed", 2), done
    assert done["result"] == {"image_id": 7, "hash": sha256}
    assert time.monotonic() - began >= 5 * 0.95  # the policy's first backoff, jitter included
    assert [(u.image_id, u.sha256, u.status) for u in iqdb.uploads] == [
        (7, sha256, 503),
        (7, sha256, 200),
    ]


def test_a_posts_rating_is_the_bayesian_average_of_its_votes(
    stack: Pipeline, database_url: str
) -> None:
    asyncio.run(_seed(database_url))
    _worker(stack)
    alice = stack.client("alice")
    task_id = enqueue(
        alice, "recalculate_rating", args={"post_id": 2, "database_url": database_url}
    )
    done = wait_task(alice, task_id)
    assert done["status"] == "completed", done
    site_mean = sum(map(sum, VOTES.values())) / sum(map(len, VOTES.values()))
    prior = imageboard.PRIOR_VOTES
    expected = (prior * site_mean + sum(VOTES[2])) / (prior + len(VOTES[2]))
    assert asyncio.run(_ratings(database_url)) == {
        1: (None, 0),
        2: (pytest.approx(expected), 5),
        3: (None, 0),
    }
    assert done["result"] == {"post_id": 2, "rating": pytest.approx(expected), "votes": 5}
    missing = enqueue(
        alice, "recalculate_rating", args={"post_id": 99, "database_url": database_url}
    )
    failed = wait_task(alice, missing)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert "no post 99" in failed["error"]


async def _seed(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(SCHEMA_SQL.read_text())
        await connection.execute(SCHEMA_SQL.read_text())  # applying it twice changes nothing
        await connection.executemany(
            "INSERT INTO imageboard.posts (id) VALUES ($1)", [(post,) for post in VOTES]
        )
        await connection.executemany(
            "INSERT INTO imageboard.votes (post_id, user_id, score) VALUES ($1, $2, $3)",
            [
                (post, user, score)
                for post, scores in VOTES.items()
                for user, score in enumerate(scores)
            ],
        )
    finally:
        await connection.close()


async def _ratings(database_url: str) -> dict[int, tuple[float | None, int]]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT id, rating, votes FROM imageboard.posts ORDER BY id")
    finally:
        await connection.close()
    return {row["id"]: (row["rating"], row["votes"]) for row in rows}
