"""Segmented downloads: range splitting, the recorded state, and fetches against a real server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from services.downloader.handlers import download_file
from services.downloader.segments import Segment, decode, encode, split
from shared.errors import TransientError
from tests.downloader.conftest import JOB, USER, command

if TYPE_CHECKING:
    from tests.downloader.conftest import MakeDownloader
    from tests.support.file_server import FileServer, RequestRecord

MIB = 1024 * 1024


def test_split_cuts_on_mib_boundaries_and_covers_the_file() -> None:
    segments = split(10 * MIB + 5, 4)
    assert [(s.start, s.end) for s in segments] == [
        (0, 3 * MIB),
        (3 * MIB, 5 * MIB),
        (5 * MIB, 8 * MIB),
        (8 * MIB, 10 * MIB + 5),
    ]
    assert all(s.done == s.start for s in segments)
    assert [(s.start, s.end) for s in split(3 * MIB, 8)] == [
        (0, MIB),
        (MIB, 2 * MIB),
        (2 * MIB, 3 * MIB),
    ]
    assert [(s.start, s.end) for s in split(100, 4)] == [(0, 100)]


def test_the_state_round_trips_and_anything_but_a_tiling_is_refused() -> None:
    segments = [Segment(0, 10, 4), Segment(10, 20, 20), Segment(20, 25, 20)]
    assert decode(encode(segments), 25) == segments
    for text in ("0-10-4,12-20-12", "0-10-11", "0-10-4,10-20", "x", "", "0-10-0,5-20-5"):
        assert decode(text, 20) is None
    assert decode(encode(segments), 26) is None  # another size: another file


def _ranges(requests: list[RequestRecord]) -> list[tuple[int, int]]:
    spans = []
    for record in requests:
        assert record.range is not None
        first, _, last = record.range.removeprefix("bytes=").partition("-")
        spans.append((int(first), int(last) + 1))
    return sorted(spans)


async def test_a_big_file_comes_as_parallel_ranges_into_one_part(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    downloader = make_downloader(segment_threshold_bytes=MIB, segments=4)
    _url, sha = file_server.add_file("big.bin", size=8 * MIB + 123)
    cmd = command(file_server.file_url("big.bin", rate=8 * MIB), sha256=sha)

    event = await download_file(cmd, downloader.deps, attempt=1)

    assert (event.size, event.sha256) == (8 * MIB + 123, sha)
    source = (file_server.root / "big.bin").read_bytes()
    assert downloader.objects() == {f"{USER}/{JOB}/big.bin": source}
    assert downloader.parts() == []
    first, *rest = file_server.requests_for("/files/big.bin")
    assert first.range is None
    etag = first.response_headers["ETag"]
    assert all(r.status == 206 and r.if_range == etag for r in rest)
    assert _ranges(rest) == [(2 * MIB, 4 * MIB), (4 * MIB, 6 * MIB), (6 * MIB, 8 * MIB + 123)]
    assert file_server.peak_in_flight == 4


async def test_segments_draw_on_the_host_budget(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    downloader = make_downloader(segment_threshold_bytes=MIB, segments=4, per_host=2)
    _url, sha = file_server.add_file("big.bin", size=8 * MIB)
    cmd = command(file_server.file_url("big.bin", rate=8 * MIB))

    event = await download_file(cmd, downloader.deps, attempt=1)

    assert event.sha256 == sha
    assert file_server.peak_in_flight == 2
    assert len(file_server.requests_for("/files/big.bin")) == 4  # every segment was fetched


async def test_each_cut_segment_resumes_where_it_stopped(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    downloader = make_downloader(segment_threshold_bytes=MIB, segments=4)
    _url, sha = file_server.add_file("cut.bin", size=8 * MIB)
    # Every connection drops after 1.5 MiB, and the first drop stops the others: each 2 MiB
    # segment needs a second try, and all four got somewhere in the first.
    cmd = command(file_server.file_url("cut.bin", abort_after=3 * MIB // 2, rate=4 * MIB))
    with pytest.raises(TransientError):
        await download_file(cmd, downloader.deps, attempt=1)
    assert downloader.parts()  # kept, with its segments' state
    file_server.reset_requests()

    event = await download_file(cmd, downloader.deps, attempt=2)

    assert event.sha256 == sha
    retried = _ranges(file_server.requests_for("/files/cut.bin"))
    # Each segment picked up past its own start and ran to its own end.
    assert [(start // (2 * MIB), end) for start, end in retried] == [
        (0, 2 * MIB),
        (1, 4 * MIB),
        (2, 6 * MIB),
        (3, 8 * MIB),
    ]
    assert all(start % (2 * MIB) > 0 for start, _ in retried)


async def test_a_file_changed_between_tries_is_fetched_again_whole(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    downloader = make_downloader(segment_threshold_bytes=MIB, segments=4)
    file_server.add_file("moving.bin", size=8 * MIB, seed=1)
    # Connections drop after 1 MiB: the 2 MiB segments of the first version cannot finish,
    # the 1 MiB segments of the second can.
    cmd = command(file_server.file_url("moving.bin", abort_after=MIB))
    with pytest.raises(TransientError):
        await download_file(cmd, downloader.deps, attempt=1)
    _url, new_sha = file_server.add_file("moving.bin", size=3 * MIB, seed=2)  # a new ETag
    file_server.reset_requests()

    event = await download_file(cmd, downloader.deps, attempt=2)

    assert (event.size, event.sha256) == (3 * MIB, new_sha)
    probe = file_server.requests_for("/files/moving.bin")[0]
    assert probe.range is not None  # asked to resume a segment
    assert probe.if_range is not None
    assert probe.status == 200  # If-Range said no: the new version, from its start
    assert downloader.parts() == []
