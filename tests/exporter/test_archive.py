"""The archive mechanics: real zip and tar.gz files checked with the system's unzip, tar and
sha256sum; compression choices; ZIP64; streaming without holding files in memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import time
import tracemalloc
import zipfile
from typing import TYPE_CHECKING

import pytest

from services.exporter.archive import (
    ArchiveAborted,
    HashingSink,
    Member,
    Progress,
    SourceMismatch,
    chunks_reader,
    stored_in_zip,
    write_archive,
)
from services.exporter.manifest import metadata_files, sha256sums
from tests.exporter.archives import check_sums, extract, need_tools, same_bytes
from tests.exporter.conftest import JOB, MIB, build_command
from tests.exporter.stac_validation import validate_item_collection

if TYPE_CHECKING:
    from pathlib import Path

    from shared.events import ExportFormat, ExportItem
    from shared.storage.local import LocalStorage
    from tests.exporter.conftest import StoreFiles


class FileTarget:
    """A sink target writing to a plain file (the storage part stands here in the handler)."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("wb")

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)

    def close(self) -> None:
        self.handle.close()


def members_of(items: list[ExportItem], storage: LocalStorage) -> list[Member]:
    def opener(key: str) -> object:
        return lambda: (storage.root / key).open("rb")

    return [
        Member(item.arcname, item.size, item.sha256, opener(item.filepath))  # type: ignore[arg-type]
        for item in items
    ]


def build(
    tmp_path: Path,
    items: list[ExportItem],
    storage: LocalStorage,
    export_format: ExportFormat,
    *,
    include_metadata: bool = True,
) -> tuple[Path, HashingSink]:
    command = build_command(items, export_format, include_metadata=include_metadata)
    suffix = "zip" if export_format == "zip" else "tar.gz"
    path = tmp_path / f"export.{suffix}"
    target = FileTarget(path)
    sink = HashingSink(target)
    built_at = time.time()
    try:
        write_archive(
            sink,
            export_format,
            members_of(items, storage),
            metadata=(
                (lambda written: metadata_files(command, written, built_at=built_at))
                if include_metadata
                else None
            ),
            mtime=built_at,
        )
    finally:
        target.close()
    return path, sink


@pytest.mark.parametrize("export_format", ["zip", "tar.gz"])
def test_thirty_files_extract_byte_for_byte_and_their_sums_check(
    tmp_path: Path, storage: LocalStorage, store_files: StoreFiles, export_format: ExportFormat
) -> None:
    items = store_files(30, size=200 * 1024)
    archive, sink = build(tmp_path, items, storage, export_format)

    assert sink.size == archive.stat().st_size
    assert sink.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    out = extract(archive, tmp_path / "out", export_format)
    for item in items:
        assert same_bytes(out / item.arcname, storage.root / item.filepath), item.arcname
    checked = check_sums(out)
    assert len(checked) == 30 + 2  # every file, manifest.json and the STAC items
    extracted = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert extracted == sorted(
        [item.arcname for item in items] + ["manifest.json", "stac-items.json", "SHA256SUMS"]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == [item.arcname for item in items]
    assert {f["sha256"] for f in manifest["files"]} == {item.sha256 for item in items}
    assert manifest["files"][0]["url"] == items[0].url
    assert manifest["totals"] == {
        "files": 30,
        "artifacts": 0,
        "bytes": sum(item.size for item in items),
    }
    stac = json.loads((out / "stac-items.json").read_text())
    parsed = validate_item_collection(stac)
    assert len(parsed) == 30
    for feature in stac["features"]:
        href = feature["assets"]["data"]["href"]
        assert href.startswith("./")
        assert (out / href).is_file()  # relative hrefs resolve inside the extracted archive


def test_zip_stores_compressed_formats_and_deflates_the_rest(
    tmp_path: Path, storage: LocalStorage, store_files: StoreFiles
) -> None:
    items = store_files(12, size=100 * 1024)
    archive, _ = build(tmp_path, items, storage, "zip")

    with zipfile.ZipFile(archive) as opened:
        methods = {info.filename: info.compress_type for info in opened.infolist()}
        assert opened.testzip() is None
    for item in items:
        expected = zipfile.ZIP_STORED if stored_in_zip(item.arcname) else zipfile.ZIP_DEFLATED
        assert methods[item.arcname] == expected, item.arcname
    assert methods[f"{JOB}/scene_00.tif"] == zipfile.ZIP_STORED
    assert methods[f"{JOB}/scene_01.csv"] == zipfile.ZIP_DEFLATED
    assert methods["manifest.json"] == zipfile.ZIP_DEFLATED
    assert stored_in_zip("a/B.JP2")
    assert stored_in_zip("x.tar.gz")
    assert not stored_in_zip("x.csv")


def test_tar_gz_is_one_gzip_stream_of_a_pax_tar(
    tmp_path: Path, storage: LocalStorage, store_files: StoreFiles
) -> None:
    items = store_files(4)
    archive, _ = build(tmp_path, items, storage, "tar.gz", include_metadata=False)

    assert archive.read_bytes()[:2] == b"\x1f\x8b"
    need_tools("gzip")
    assert subprocess.run(["gzip", "-t", str(archive)], check=False).returncode == 0
    with tarfile.open(archive, "r:gz") as opened:
        members = opened.getmembers()
    assert [m.name for m in members] == [item.arcname for item in items]
    assert all(m.isreg() and m.mode == 0o644 for m in members)


def test_without_metadata_the_archive_holds_only_the_files(
    tmp_path: Path, storage: LocalStorage, store_files: StoreFiles
) -> None:
    items = store_files(3)
    archive, _ = build(tmp_path, items, storage, "zip", include_metadata=False)
    with zipfile.ZipFile(archive) as opened:
        assert opened.namelist() == [item.arcname for item in items]


@pytest.mark.parametrize("export_format", ["zip", "tar.gz"])
def test_a_source_that_changed_is_refused(
    tmp_path: Path, storage: LocalStorage, store_files: StoreFiles, export_format: ExportFormat
) -> None:
    items = store_files(2)
    (storage.root / items[1].filepath).write_bytes(b"x" * items[1].size)  # same size, new bytes
    with pytest.raises(SourceMismatch, match="SHA-256"):
        build(tmp_path, items, storage, export_format)
    (storage.root / items[1].filepath).write_bytes(b"short")
    with pytest.raises(SourceMismatch, match="bytes"):
        build(tmp_path, items, storage, export_format)
    (storage.root / items[1].filepath).write_bytes(b"y" * (items[1].size + 10))
    with pytest.raises(SourceMismatch, match="more than"):
        build(tmp_path, items, storage, export_format)


def test_an_abort_stops_the_writer_between_chunks(
    tmp_path: Path, storage: LocalStorage, store_files: StoreFiles
) -> None:
    items = store_files(3, size=3 * MIB)
    abort = threading.Event()
    progress = Progress()
    target = FileTarget(tmp_path / "aborted.zip")

    class AbortAfterFirstChunk:
        def write(self, chunk: bytes) -> None:
            target.write(chunk)
            if progress.bytes_done >= MIB:
                abort.set()

    try:
        with pytest.raises(ArchiveAborted):
            write_archive(
                HashingSink(AbortAfterFirstChunk()),
                "zip",
                members_of(items, storage),
                progress=progress,
                abort=abort,
            )
    finally:
        target.close()
    assert progress.files_done == 0
    assert MIB <= progress.bytes_done <= 2 * MIB


@pytest.mark.parametrize("export_format", ["zip", "tar.gz"])
def test_files_stream_through_without_being_held_in_memory(
    tmp_path: Path, storage: LocalStorage, export_format: ExportFormat
) -> None:
    size = 64 * MIB
    path = storage.root / "u" / "big.bin"
    path.parent.mkdir(parents=True)
    with path.open("wb") as handle:
        for block in range(size // MIB):
            handle.write(os.urandom(MIB // 2) + bytes([block]) * (MIB // 2))
    member = Member("big.bin", size, "", lambda: path.open("rb"))

    class Discard:
        def write(self, chunk: bytes) -> None:
            del chunk

    tracemalloc.start()
    try:
        written = write_archive(HashingSink(Discard()), export_format, [member])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written[0].size == size
    assert peak < 8 * MIB, f"peak Python allocation {peak / MIB:.1f} MiB for a 64 MiB file"


@pytest.mark.slow
def test_a_zip_past_4_gib_uses_zip64_and_unzip_reads_it(tmp_path: Path) -> None:
    need_tools("unzip")
    size = 4 * 1024 * MIB + 5 * MIB
    big = tmp_path / "big.tif"  # .tif: stored, so the archive holds every byte of it
    with big.open("wb") as handle:
        handle.truncate(size)  # sparse: zeros read at memory speed, no disk used
    small = tmp_path / "after.txt"
    small.write_bytes(b"the entry after the 4 GiB mark\n")
    members = [
        Member("big.tif", size, "", lambda: big.open("rb")),
        Member("after.txt", small.stat().st_size, "", lambda: small.open("rb")),
    ]
    archive = tmp_path / "big.zip"
    target = FileTarget(archive)
    written = write_archive(HashingSink(target), "zip", members)
    target.close()

    assert archive.stat().st_size > 4 * 1024 * MIB
    with zipfile.ZipFile(archive) as opened:
        infos = {info.filename: info for info in opened.infolist()}
        assert infos["big.tif"].file_size == size
        assert infos["after.txt"].header_offset > 0xFFFFFFFF  # only a ZIP64 field holds it
        assert opened.read("after.txt") == small.read_bytes()
    listing = subprocess.run(
        ["unzip", "-Z", "-v", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    assert "PKWARE 64-bit sizes" in listing  # the ZIP64 extra field
    tested = subprocess.run(
        ["unzip", "-tq", str(archive)], capture_output=True, text=True, check=False, timeout=300
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert [w.size for w in written] == [size, small.stat().st_size]


def test_sha256sums_escapes_names_as_gnu_sha256sum_reads_them(tmp_path: Path) -> None:
    names = ["plain.tif", "with space.csv", "back\\slash.txt", "ünïcode.json"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode() * 3)
    sums = sha256sums([(name, hashlib.sha256(name.encode() * 3).hexdigest()) for name in names])
    (tmp_path / "SHA256SUMS").write_bytes(sums)
    assert len(check_sums(tmp_path)) == len(names)


def test_a_chunk_reader_returns_exactly_what_was_asked() -> None:
    reader = chunks_reader(iter([b"abc", b"", b"defgh", b"ij"]))
    assert reader.read(4) == b"abcd"
    assert reader.read(10) == b"efghij"
    assert reader.read(1) == b""
    assert isinstance(reader, io.BufferedReader)
