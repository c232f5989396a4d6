"""GET /api/v1/downloads/files/{id}: the stored bytes, whole or by Range."""

from __future__ import annotations

import hashlib
import os
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pytest

from services.gateway.errors import RangeNotSatisfiable
from services.gateway.files import ByteRange, attachment, parse_range
from services.gateway.tracker import project
from shared.storage import open_storage
from shared.storage.local import LocalStorage
from tests.gateway.support import downloaded, started, submit_job, user_id

if TYPE_CHECKING:
    from pathlib import Path

    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from shared.ids import FileId
    from shared.settings import Settings

DATA = bytes(range(256)) * 4  # 1024 bytes, each position distinct enough to check slices


async def _store(
    pool: asyncpg.Pool, settings: Settings, owner: str, data: bytes, name: str = "scène 1.tif"
) -> tuple[FileId, str]:
    """A completed file of `owner`'s holding `data`: its id and its storage key."""
    owner_id = await user_id(pool, owner)
    job, files = await submit_job(pool, owner_id, files=2)
    event = downloaded(job, files[0], data, name=name, content_type="image/tiff")
    storage = open_storage(settings.storage_url)
    part = await storage.open_part(f"p-{files[0]}", resume=False)
    part.write(data)
    await part.commit(event.filepath)
    async with pool.acquire() as connection:
        await project(connection, started(job, files[1]))
        await project(connection, event)
    return files[0], event.filepath


@pytest.fixture
async def stored(pool: asyncpg.Pool, settings: Settings) -> tuple[FileId, str]:
    """A completed file of alice's: its id and its storage key."""
    return await _store(pool, settings, "alice", DATA)


@pytest.fixture
def root(settings: Settings) -> Path:
    """The storage folder, where the tests plant what an intruder with shell access could."""
    storage = open_storage(settings.storage_url)
    assert isinstance(storage, LocalStorage)
    return storage.root


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


async def test_the_whole_of_a_large_file_hashes_to_its_record(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks, not a multiple of one
    file_id, _ = await _store(pool, settings, "alice", data, name="big.bin")

    whole = await client.get(_url(file_id), headers=auth)
    tail = await client.get(_url(file_id), headers={**auth, "Range": "bytes=2000000-"})

    recorded = await pool.fetchval("SELECT sha256 FROM files WHERE id = $1", file_id)
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == recorded
    assert tail.status_code == 206
    assert tail.content == data[2_000_000:]


async def _refused(
    client: AsyncTestClient[Litestar], auth: dict[str, str], file_id: str, foreign: bytes
) -> None:
    """The file answers 404, whole or by range, and never carries a byte of `foreign`."""
    for headers in (auth, {**auth, "Range": "bytes=0-"}, {**auth, "Range": "bytes=-16"}):
        response = await client.get(_url(file_id), headers=headers)
        assert response.status_code == 404, (headers, response.text)
        assert "storage" in response.json()["detail"]
        assert foreign[:16] not in response.content
        assert foreign[-16:] not in response.content


async def test_a_stored_file_swapped_for_a_link_outside_storage_is_not_served(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    stored: tuple[FileId, str],
    root: Path,
    tmp_path: Path,
) -> None:
    secret = b"root:x:0:0:" + os.urandom(len(DATA) - 11)  # the recorded size: only the link tells
    outside = tmp_path / "outside.bin"
    outside.write_bytes(secret)
    planted = root / stored[1]
    planted.unlink()
    planted.symlink_to(outside)

    await _refused(client, auth, stored[0], secret)


async def test_a_link_to_another_users_stored_file_is_not_served(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    stored: tuple[FileId, str],
    pool: asyncpg.Pool,
    settings: Settings,
    root: Path,
) -> None:
    bobs_bytes = os.urandom(len(DATA))
    _, bobs_key = await _store(pool, settings, "bob", bobs_bytes, name="bob.tif")
    planted = root / stored[1]
    planted.unlink()
    planted.symlink_to(root / bobs_key)

    await _refused(client, auth, stored[0], bobs_bytes)


async def test_a_hard_link_or_a_file_of_another_size_is_not_served(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    stored: tuple[FileId, str],
    pool: asyncpg.Pool,
    settings: Settings,
    root: Path,
) -> None:
    # A hard link is a plain file to every check but its size, which is not the recorded one.
    bobs_bytes = os.urandom(len(DATA) * 2)
    _, bobs_key = await _store(pool, settings, "bob", bobs_bytes, name="bob.tif")
    planted = root / stored[1]
    planted.unlink()
    os.link(root / bobs_key, planted)
    await _refused(client, auth, stored[0], bobs_bytes)

    grown = DATA + b"appended after the download"
    planted.unlink()
    planted.write_bytes(grown)
    await _refused(client, auth, stored[0], grown[len(DATA) :])


async def test_a_linked_folder_on_the_way_is_not_served(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    stored: tuple[FileId, str],
    root: Path,
    tmp_path: Path,
) -> None:
    secret = os.urandom(len(DATA))
    folder = (root / stored[1]).parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / folder.name).mkdir()
    (elsewhere / folder.name / (root / stored[1]).name).write_bytes(secret)
    (root / stored[1]).unlink()
    folder.rmdir()
    folder.symlink_to(elsewhere / folder.name)

    await _refused(client, auth, stored[0], secret)


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


@pytest.mark.parametrize(
    "filename",
    [
        "scène 1.tif",
        'a"b.tif',
        "back\\slash.tif",
        "100%.tif",
        "line\r\nX-Injected: 1.tif",
        "日本語.tif",
        "semi;colon=.tif",
        "",
    ],
)
def test_attachment_names_the_file_exactly_and_safely(filename: str) -> None:
    header = attachment(filename)

    # RFC 8187's value: only unreserved characters and %-escapes, so nothing needs quoting.
    pattern = r'attachment; filename="([^"\\%]*)"; filename\*=UTF-8\'\'([A-Za-z0-9%._~-]+)'
    match = re.fullmatch(pattern, header)
    assert match is not None, header
    fallback, encoded = match.groups()
    assert fallback  # old clients get a name, not an empty one
    assert fallback.isascii()
    assert fallback.isprintable()  # so no CR/LF: nothing can be smuggled in as a header
    assert unquote(encoded, errors="strict") == (filename or "download")


async def test_an_export_archive_is_named_by_the_same_header(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    settings: Settings,
) -> None:
    owner = await user_id(pool, "alice")
    export_id = await pool.fetchval(
        "INSERT INTO exports (id, user_id, status, format, include_metadata, file_count,"
        " total_bytes, filepath, size, sha256)"
        " VALUES (gen_random_uuid(), $1, 'ready', 'zip', false, 1, 4, $2, 4, NULL) RETURNING id",
        owner,
        f"{owner}/exports/archive.zip",
    )
    storage = open_storage(settings.storage_url)
    part = await storage.open_part("archive", resume=False)
    part.write(b"PK..")
    await part.commit(f"{owner}/exports/archive.zip")

    response = await client.get(f"/api/v1/downloads/exports/{export_id}/download", headers=auth)

    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == attachment(f"export-{export_id}.zip")
