"""GET /api/v1/downloads/files/{id}: the stored bytes, whole or by Range."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from services.gateway.errors import RangeNotSatisfiable
from services.gateway.ranges import ByteRange, parse_range
from services.gateway.tracker import project
from shared.storage import open_storage
from tests.gateway.support import downloaded, started, submit_job, user_id

if TYPE_CHECKING:
    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.ids import FileId
    from shared.settings import Settings

DATA = bytes(range(256)) * 4  # 1024 bytes, each position distinct enough to check slices


@pytest.fixture
async def stored(pool: asyncpg.Pool, settings: Settings) -> tuple[FileId, str]:
    """A completed file of alice's: its id and its storage key."""
    alice = await user_id(pool, "alice")
    job, files = await submit_job(pool, alice, files=2)
    event = downloaded(job, files[0], DATA, name="scène 1.tif", content_type="image/tiff")
    storage = open_storage(settings.storage_url)
    part = await storage.open_part("p1", resume=False)
    part.write(DATA)
    await part.commit(event.filepath)
    async with pool.acquire() as connection:
        await project(connection, started(job, files[1]))
        await project(connection, event)
    return files[0], event.filepath


def _url(file_id: str) -> str:
    return f"/api/v1/downloads/files/{file_id}"


async def test_whole_file_with_headers(
    client: AsyncTestClient[Litestar], auth: dict[str, str], stored: tuple[FileId, str]
) -> None:
    response = await client.get(_url(stored[0]), headers=auth)

    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["content-type"] == "image/tiff"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''sc%C3%A8ne%201.tif" in disposition
    assert response.headers["etag"].startswith('"')


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=2-5", 2, 6),
        ("bytes=1000-", 1000, 1024),
        ("bytes=-24", 1000, 1024),
        ("bytes=1000-5000", 1000, 1024),
    ],
)
async def test_a_single_range_answers_206(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    stored: tuple[FileId, str],
    header: str,
    start: int,
    end: int,
) -> None:
    response = await client.get(_url(stored[0]), headers={**auth, "Range": header})

    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
    assert response.headers["content-length"] == str(end - start)
    assert response.headers["accept-ranges"] == "bytes"


async def test_ranges_outside_the_file_answer_416_and_others_the_whole_file(
    client: AsyncTestClient[Litestar], auth: dict[str, str], stored: tuple[FileId, str]
) -> None:
    for header in ("bytes=1024-", "bytes=5000-6000", "bytes=-0"):
        response = await client.get(_url(stored[0]), headers={**auth, "Range": header})
        assert response.status_code == 416, header
        assert response.headers["content-range"] == f"bytes */{len(DATA)}"
        assert response.json()["status_code"] == 416

    # Multiple ranges, other units and nonsense are ignored: the whole file, as RFC 9110 allows.
    for header in ("bytes=0-1,4-5", "items=0-1", "bytes=5-2", "bytes=x"):
        response = await client.get(_url(stored[0]), headers={**auth, "Range": header})
        assert response.status_code == 200, header
        assert response.content == DATA

    # If-Range with a stale validator: the client's copy is outdated, so the whole file.
    stale = await client.get(
        _url(stored[0]), headers={**auth, "Range": "bytes=0-1", "If-Range": '"old"'}
    )
    fresh = await client.get(_url(stored[0]), headers=auth)
    current = await client.get(
        _url(stored[0]),
        headers={**auth, "Range": "bytes=0-1", "If-Range": fresh.headers["etag"]},
    )
    assert stale.status_code == 200
    assert current.status_code == 206


async def test_files_not_downloaded_or_gone_answer_404(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    stored: tuple[FileId, str],
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    downloading = await pool.fetchval("SELECT id FROM files WHERE status = 'downloading'")

    not_yet = await client.get(_url(str(downloading)), headers=auth)
    await open_storage(settings.storage_url).delete(stored[1])
    gone = await client.get(_url(stored[0]), headers=auth)

    assert not_yet.status_code == 404
    assert "downloading" in not_yet.json()["detail"]
    assert gone.status_code == 404
    assert "storage" in gone.json()["detail"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-0", ByteRange(0, 1, 10)),
        ("bytes=0-", ByteRange(0, 10, 10)),
        ("bytes=3-100", ByteRange(3, 10, 10)),
        ("bytes=-3", ByteRange(7, 10, 10)),
        ("bytes=-30", ByteRange(0, 10, 10)),
        ("bytes= 2 - 4", ByteRange(2, 5, 10)),
        ("bytes=4-2", None),
        ("bytes=-", None),
        ("bytes=0-1,3-4", None),
        ("pages=1-2", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 10) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=-5", 0)])
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        parse_range(header, size)
    assert raised.value.headers == {"Content-Range": f"bytes */{size}"}


def test_byte_range_headers() -> None:
    wanted = ByteRange(2, 6, 10)

    assert wanted.length == 4
    assert wanted.content_range == "bytes 2-5/10"
