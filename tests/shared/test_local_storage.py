"""The storage contract on LocalStorage (file://), plus what only a local folder can show."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from shared.storage import StorageError, open_storage
from shared.storage.local import LocalStorage
from tests.shared.storage_contract import KEY, StorageContract, read_all

if TYPE_CHECKING:
    from pathlib import Path


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return LocalStorage(tmp_path / "data")


async def test_the_file_appears_only_at_commit(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    part = await storage.open_part("file-1", resume=False)
    part.write(b"payload")
    final = tmp_path / "data" / KEY
    assert not final.exists()
    assert not final.parent.exists()
    await part.commit(KEY)
    assert final.read_bytes() == b"payload"
    assert storage.local_path(KEY) == final
    assert list((tmp_path / "data" / ".parts").iterdir()) == []


async def test_abort_removes_the_part_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    part = await storage.open_part("file-1", resume=False)
    part.write(b"payload")
    assert (tmp_path / "data" / ".parts" / "file-1").exists()
    await part.abort()
    assert list((tmp_path / "data" / ".parts").iterdir()) == []


async def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    (tmp_path / "secret").write_bytes(b"not yours")
    with pytest.raises(StorageError):
        await read_all(storage, "../secret")
    part = await storage.open_part("file-1", resume=False)
    part.write(b"overwrite attempt")
    with pytest.raises(StorageError):
        await part.commit("../secret")
    await part.abort()
    assert (tmp_path / "secret").read_bytes() == b"not yours"


async def test_open_storage_picks_local_for_file_urls(tmp_path: Path) -> None:
    storage = open_storage(f"file://{tmp_path}/data")
    assert isinstance(storage, LocalStorage)
    assert storage.root == (tmp_path / "data").resolve()


def test_open_storage_refuses_other_schemes() -> None:
    with pytest.raises(StorageError, match="DOWNLINK_STORAGE_URL"):
        open_storage("ftp://example.invalid/data")
    with pytest.raises(StorageError, match="DOWNLINK_STORAGE_URL"):
        open_storage("file://")


async def test_a_part_id_cannot_clash_with_a_meta_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    with pytest.raises(StorageError):
        await storage.open_part("file-1.meta", resume=False)


async def test_a_part_killed_mid_write_resumes_from_what_reached_the_disk(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    # What a SIGKILLed writer leaves: the bytes on disk, no close, a meta file from its start.
    (tmp_path / "data" / ".parts" / "file-1").write_bytes(b"0123")
    (tmp_path / "data" / ".parts" / "file-1.meta").write_bytes(b'{"validator":"v1"}')
    part = await storage.open_part("file-1", resume=True)
    assert (part.size, part.meta) == (4, {"validator": "v1"})
    part.write(b"4567")
    await part.commit(KEY)
    assert await read_all(storage, KEY) == b"01234567"


async def test_a_corrupt_meta_file_means_no_meta(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "data")
    (tmp_path / "data" / ".parts" / "file-1").write_bytes(b"0123")
    (tmp_path / "data" / ".parts" / "file-1.meta").write_bytes(b"{not json")
    part = await storage.open_part("file-1", resume=True)
    assert part.meta == {}
    await part.abort()
