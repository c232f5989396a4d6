"""The behaviour every storage backend owes its callers; each backend binds it in its own module.

A binding subclasses `StorageContract` and provides a `storage` fixture (an empty store).
Nothing here knows which backend runs.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

import pytest

from shared.storage import ObjectRefused, StorageError, read_open

if TYPE_CHECKING:
    from shared.storage import PartWriter, Storage

KEY = "user-1/job-1/scene.tif"
INVALID_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "user-1/../../outside",
    "user-1//double",
    "user-1/./here",
    "user-1/job-1/",
    ".parts/file-1",
]


async def read_all(storage: Storage, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in storage.read(key, start, end)])


async def collect(source: PartWriter) -> bytes:
    return b"".join([chunk async for chunk in source.existing()])


class StorageContract:
    """Subclass with a `storage` fixture."""

    async def store(self, storage: Storage, key: str, data: bytes, part_id: str = "p-1") -> None:
        part = await storage.open_part(part_id, resume=False)
        part.write(data)
        await part.commit(key)

    # -- parts and commit ----------------------------------------------------------------

    async def test_a_committed_part_appears_under_its_key(self, storage: Storage) -> None:
        part = await storage.open_part("file-1", resume=False)
        part.write(b"hello ")
        part.write(b"world")
        assert part.size == 11
        await part.commit(KEY)
        assert await storage.exists(KEY)
        assert await storage.size(KEY) == 11
        assert await read_all(storage, KEY) == b"hello world"

    async def test_a_part_is_invisible_until_commit(self, storage: Storage) -> None:
        part = await storage.open_part("file-1", resume=False)
        part.write(b"x" * 100_000)
        assert not await storage.exists(KEY)
        with pytest.raises(StorageError):
            await storage.size(KEY)
        with pytest.raises(StorageError):
            await read_all(storage, KEY)
        await part.commit(KEY)
        assert await read_all(storage, KEY) == b"x" * 100_000

    async def test_commit_replaces_an_object_whole(self, storage: Storage) -> None:
        await self.store(storage, KEY, b"old contents, longer")
        await self.store(storage, KEY, b"new")
        assert await read_all(storage, KEY) == b"new"

    async def test_an_aborted_part_leaves_nothing(self, storage: Storage) -> None:
        part = await storage.open_part("file-1", resume=False)
        part.write(b"half a file")
        await part.abort()
        assert not await storage.exists(KEY)
        resumed = await storage.open_part("file-1", resume=True)
        assert resumed.size == 0
        assert await collect(resumed) == b""
        await resumed.abort()

    async def test_resume_keeps_the_bytes_of_a_closed_part(self, storage: Storage) -> None:
        first = await storage.open_part("file-1", resume=False)
        first.write(b"0123456789")
        await first.close()
        part = await storage.open_part("file-1", resume=True)
        assert part.size == 10
        assert await collect(part) == b"0123456789"
        part.write(b"abcdef")
        assert part.size == 16
        await part.commit(KEY)
        assert await read_all(storage, KEY) == b"0123456789abcdef"

    async def test_existing_bytes_rebuild_the_hash(self, storage: Storage) -> None:
        data = bytes(range(256)) * 40_000  # ~10 MB: more than one chunk
        first = await storage.open_part("file-1", resume=False)
        first.write(data)
        await first.close()
        part = await storage.open_part("file-1", resume=True)
        digest = hashlib.sha256()
        async for chunk in part.existing():
            digest.update(chunk)
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
        await part.abort()

    async def test_positioned_writes_fill_an_allocated_part_in_any_order(
        self, storage: Storage
    ) -> None:
        part = await storage.open_part("file-1", resume=False)
        await part.allocate(12)
        assert part.size == 12
        await asyncio.gather(
            asyncio.to_thread(part.write_at, 8, b"ijkl"),
            asyncio.to_thread(part.write_at, 0, b"abcd"),
            asyncio.to_thread(part.write_at, 4, b"efgh"),
        )
        assert part.read_at(2, 4) == b"cdef"
        await part.save_meta({"segments": "0-12-12"})
        await part.close()
        resumed = await storage.open_part("file-1", resume=True)
        assert (resumed.size, resumed.meta) == (12, {"segments": "0-12-12"})
        resumed.write_at(0, b"A")  # a resumed part still writes in place, not at its end
        await resumed.commit(KEY)
        assert await read_all(storage, KEY) == b"Abcdefghijkl"

    async def test_opening_without_resume_starts_from_zero(self, storage: Storage) -> None:
        first = await storage.open_part("file-1", resume=False)
        first.write(b"stale bytes")
        await first.close()
        part = await storage.open_part("file-1", resume=False)
        assert part.size == 0
        part.write(b"fresh")
        await part.commit(KEY)
        assert await read_all(storage, KEY) == b"fresh"

    async def test_truncate_throws_the_kept_bytes_away(self, storage: Storage) -> None:
        first = await storage.open_part("file-1", resume=False)
        first.write(b"server changed the file")
        await first.close()
        part = await storage.open_part("file-1", resume=True)
        await part.truncate()
        assert part.size == 0
        part.write(b"v2")
        await part.commit(KEY)
        assert await read_all(storage, KEY) == b"v2"

    async def test_discard_part_removes_a_closed_part(self, storage: Storage) -> None:
        first = await storage.open_part("file-1", resume=False)
        first.write(b"junk")
        await first.close()
        await storage.discard_part("file-1")
        await storage.discard_part("file-1")  # idempotent
        part = await storage.open_part("file-1", resume=True)
        assert part.size == 0
        await part.abort()

    async def test_meta_is_kept_with_a_resumed_part(self, storage: Storage) -> None:
        first = await storage.open_part("file-1", resume=False)
        assert first.meta == {}
        first.write(b"12345")
        await first.save_meta({"url": "http://127.0.0.1:9/a", "validator": '"etag-1"'})
        await first.close()
        part = await storage.open_part("file-1", resume=True)
        assert part.meta == {"url": "http://127.0.0.1:9/a", "validator": '"etag-1"'}
        assert part.size == 5
        await part.abort()

    async def test_meta_is_replaced_not_merged(self, storage: Storage) -> None:
        part = await storage.open_part("file-1", resume=False)
        await part.save_meta({"url": "a", "validator": "v1"})
        await part.save_meta({"url": "b"})
        await part.close()
        again = await storage.open_part("file-1", resume=True)
        assert again.meta == {"url": "b"}
        await again.abort()

    @pytest.mark.parametrize("ending", ["abort", "commit", "discard", "fresh-open"])
    async def test_meta_goes_with_its_part(self, storage: Storage, ending: str) -> None:
        part = await storage.open_part("file-1", resume=False)
        part.write(b"12345")
        await part.save_meta({"validator": "v1"})
        if ending == "abort":
            await part.abort()
        elif ending == "commit":
            await part.commit(KEY)
        else:
            await part.close()
            if ending == "discard":
                await storage.discard_part("file-1")
        again = await storage.open_part("file-1", resume=ending != "fresh-open")
        assert again.meta == {}
        assert again.size == 0
        await again.abort()

    async def test_parts_are_independent(self, storage: Storage) -> None:
        a = await storage.open_part("file-a", resume=False)
        b = await storage.open_part("file-b", resume=False)
        a.write(b"aaa")
        b.write(b"bb")
        await b.abort()
        await a.commit("u/j/a.bin")
        assert await read_all(storage, "u/j/a.bin") == b"aaa"
        assert not await storage.exists("u/j/b.bin")

    async def test_concurrent_parts_commit_to_distinct_keys(self, storage: Storage) -> None:
        async def one(n: int) -> None:
            part = await storage.open_part(f"file-{n}", resume=False)
            part.write(str(n).encode() * 1000)
            await part.commit(f"u/j/{n}.bin")

        await asyncio.gather(*(one(n) for n in range(8)))
        for n in range(8):
            assert await read_all(storage, f"u/j/{n}.bin") == str(n).encode() * 1000

    @pytest.mark.parametrize("part_id", ["", "a/b", "..", ".hidden"])
    async def test_invalid_part_ids_are_refused(self, storage: Storage, part_id: str) -> None:
        with pytest.raises(StorageError):
            await storage.open_part(part_id, resume=False)

    # -- reading ---------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("start", "end", "expected"),
        [
            (0, None, b"0123456789"),
            (0, 4, b"0123"),
            (3, 7, b"3456"),
            (7, None, b"789"),
            (9, 10, b"9"),
            (5, 5, b""),
            (8, 100, b"89"),
        ],
    )
    async def test_read_a_range(
        self, storage: Storage, start: int, end: int | None, expected: bytes
    ) -> None:
        await self.store(storage, KEY, b"0123456789")
        assert await read_all(storage, KEY, start, end) == expected

    async def test_read_in_chunks(self, storage: Storage) -> None:
        await self.store(storage, KEY, b"abcdefghij")
        chunks = [chunk async for chunk in storage.read(KEY, 1, 9, chunk_size=3)]
        assert b"".join(chunks) == b"bcdefghi"
        assert all(len(chunk) <= 3 for chunk in chunks)

    async def test_reading_a_missing_key_is_a_storage_error(self, storage: Storage) -> None:
        with pytest.raises(StorageError):
            await read_all(storage, "user-1/job-1/missing.tif")

    async def test_a_prefix_is_not_an_object(self, storage: Storage) -> None:
        await self.store(storage, KEY, b"data")
        assert not await storage.exists("user-1/job-1")
        with pytest.raises(StorageError):
            await storage.size("user-1/job-1")
        with pytest.raises(StorageError):
            await read_all(storage, "user-1/job-1")

    # -- verified opening ------------------------------------------------------------------

    async def test_open_verified_reads_the_object(self, storage: Storage) -> None:
        await self.store(storage, KEY, b"0123456789")
        with await asyncio.to_thread(storage.open_verified, KEY, 10) as source:
            assert source.read() == b"0123456789"
        unchecked = await asyncio.to_thread(storage.open_verified, KEY)
        assert b"".join([c async for c in read_open(unchecked, 2, 5)]) == b"234"

    @pytest.mark.parametrize("expected_size", [0, 9, 11])
    async def test_open_verified_refuses_another_size(
        self, storage: Storage, expected_size: int
    ) -> None:
        await self.store(storage, KEY, b"0123456789")
        with pytest.raises(ObjectRefused, match="10 bytes"):
            await asyncio.to_thread(storage.open_verified, KEY, expected_size)

    async def test_open_verified_of_a_missing_key_or_prefix_is_not_a_refusal(
        self, storage: Storage
    ) -> None:
        await self.store(storage, KEY, b"data")
        for key in ("user-1/job-1/missing.tif", "user-1/job-1", "user-1/job-1/scene.tif/x"):
            with pytest.raises(StorageError, match="no object") as raised:
                await asyncio.to_thread(storage.open_verified, key, 4)
            assert not isinstance(raised.value, ObjectRefused), key

    @pytest.mark.parametrize("key", INVALID_KEYS)
    async def test_open_verified_refuses_invalid_keys(self, storage: Storage, key: str) -> None:
        with pytest.raises(StorageError):
            await asyncio.to_thread(storage.open_verified, key)

    async def test_an_open_object_keeps_the_checked_bytes_when_replaced(
        self, storage: Storage
    ) -> None:
        await self.store(storage, KEY, b"checked")
        source = await asyncio.to_thread(storage.open_verified, KEY, 7)
        await self.store(storage, KEY, b"swapped in later")
        assert b"".join([chunk async for chunk in read_open(source, chunk_size=3)]) == b"checked"
        assert source.closed

    async def test_read_open_reads_a_range_in_chunks(self, storage: Storage) -> None:
        data = bytes(range(256)) * 5
        await self.store(storage, KEY, data)
        source = await asyncio.to_thread(storage.open_verified, KEY, len(data))
        chunks = [chunk async for chunk in read_open(source, 10, 1000, chunk_size=128)]
        assert b"".join(chunks) == data[10:1000]
        assert max(len(chunk) for chunk in chunks) == 128

    async def test_key_for_path_names_only_paths_inside_the_store(self, storage: Storage) -> None:
        await self.store(storage, KEY, b"data")
        assert storage.key_for_path("/nowhere-near/user-1/job-1/scene.tif") is None
        assert storage.key_for_path("user-1/job-1/scene.tif") is None  # not absolute
        local = storage.local_path(KEY)
        if local is not None:  # a local folder: its own paths map back to their keys
            assert storage.key_for_path(str(local)) == KEY
            assert storage.key_for_path(str(local.parent / ".." / "x")) is None

    # -- keys ------------------------------------------------------------------------------

    @pytest.mark.parametrize("key", INVALID_KEYS)
    async def test_invalid_keys_are_refused_everywhere(self, storage: Storage, key: str) -> None:
        with pytest.raises(StorageError):
            await storage.exists(key)
        with pytest.raises(StorageError):
            await storage.size(key)
        with pytest.raises(StorageError):
            await read_all(storage, key)
        with pytest.raises(StorageError):
            await storage.delete(key)

    @pytest.mark.parametrize("key", INVALID_KEYS)
    async def test_a_part_cannot_commit_to_an_invalid_key(self, storage: Storage, key: str) -> None:
        part = await storage.open_part("file-1", resume=False)
        part.write(b"payload")
        with pytest.raises(StorageError):
            await part.commit(key)
        await part.abort()

    # -- size, exists, delete --------------------------------------------------------------

    async def test_size_and_exists(self, storage: Storage) -> None:
        assert not await storage.exists(KEY)
        with pytest.raises(StorageError):
            await storage.size(KEY)
        await self.store(storage, KEY, b"12345")
        assert await storage.exists(KEY)
        assert await storage.size(KEY) == 5

    async def test_an_empty_object(self, storage: Storage) -> None:
        await self.store(storage, KEY, b"")
        assert await storage.exists(KEY)
        assert await storage.size(KEY) == 0
        assert await read_all(storage, KEY) == b""

    async def test_delete(self, storage: Storage) -> None:
        await self.store(storage, KEY, b"12345")
        await self.store(storage, "user-1/job-1/other.tif", b"keep")
        await storage.delete(KEY)
        assert not await storage.exists(KEY)
        assert await read_all(storage, "user-1/job-1/other.tif") == b"keep"
        await storage.delete(KEY)  # deleting a missing object is not an error
