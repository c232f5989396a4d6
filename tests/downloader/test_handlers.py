"""download_file against a real HTTP server, real Redis and a local storage folder."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import random
import time
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import pytest
from aiohttp import web

from services.downloader.handlers import download_file, failure_event
from shared.errors import (
    BlockedAddress,
    ChecksumMismatch,
    HTTPStatusError,
    JobCancelled,
    PermanentError,
    TooLarge,
    TransientError,
)
from shared.events import FileDownloaded, FileFailed, FileProgress, FileStarted
from shared.ids import JobId
from shared.streams import CANCEL_CHANNEL, cancelled_key
from tests.downloader.conftest import JOB, USER, StaticResolver, command

if TYPE_CHECKING:
    from tests.downloader.conftest import Downloader, MakeDownloader
    from tests.support.file_server import FileServer


# -- the happy path --------------------------------------------------------------------------


async def test_the_stored_bytes_are_the_served_bytes(
    downloader: Downloader, file_server: FileServer
) -> None:
    url, sha = file_server.add_file("scene.tif", size=3 * 1024 * 1024 + 17)
    source = (file_server.root / "scene.tif").read_bytes()
    cmd = command(url, sha256=sha)

    event = await download_file(cmd, downloader.deps, attempt=1)

    assert event.sha256 == hashlib.sha256(source).hexdigest() == sha
    assert event.size == len(source)
    assert event.filename == "scene.tif"
    assert event.filepath == f"{USER}/{JOB}/scene.tif"
    assert event.file_id == cmd.file_id
    assert event.job_id == JOB
    assert event.content_type == "application/octet-stream"
    assert downloader.objects() == {f"{USER}/{JOB}/scene.tif": source}
    assert downloader.parts() == []
    assert await downloader.deps.completions.get(cmd.file_id) == event


async def test_events_come_started_progress_downloaded(
    downloader: Downloader, file_server: FileServer
) -> None:
    size = 400_000
    file_server.add_file("slow.bin", size=size)
    cmd = command(file_server.file_url("slow.bin", rate=1_000_000))

    event = await download_file(cmd, downloader.deps, attempt=2)

    events = downloader.publisher.events
    kinds = [type(e) for e in events]
    assert kinds[0] is FileStarted
    assert kinds[-1] is FileDownloaded
    assert set(kinds[1:-1]) == {FileProgress}
    assert len(kinds) >= 4, kinds  # ~0.4 s at one report per 0.05 s
    started = events[0]
    assert isinstance(started, FileStarted)
    assert (started.file_id, started.attempt, started.worker) == (cmd.file_id, 2, "test-worker-1")
    progress = downloader.publisher.of(FileProgress)
    done = [p.bytes_downloaded for p in progress]
    assert done == sorted(done)
    assert done[0] > 0
    assert done[-1] <= size
    assert all(p.total_bytes == size for p in progress)
    assert any(p.rate_bps > 0 for p in progress)
    assert events[-1] == event
    assert len({e.event_id for e in events}) == len(events)
    # Its start was on the wire, so the completion does not carry it again.
    assert (event.started_at, event.attempt, event.worker) == (None, 2, "test-worker-1")


async def test_a_file_done_within_the_progress_interval_sends_one_event_carrying_its_start(
    downloader: Downloader, file_server: FileServer
) -> None:
    url, _sha = file_server.add_file("tiny.txt", data=b"x" * 1024)
    # An interval no loaded machine overruns for 1 KiB over loopback.
    interval_s = 0.5
    limits = dataclasses.replace(downloader.deps.limits, progress_interval_s=interval_s)
    deps = dataclasses.replace(downloader.deps, limits=limits)
    before = time.time()

    event = await download_file(command(url), deps, attempt=3)

    assert downloader.publisher.events == [event]
    assert event.started_at is not None
    assert before <= event.started_at <= event.at
    assert (event.attempt, event.worker) == (3, "test-worker-1")
    await asyncio.sleep(interval_s + 0.1)  # past the interval: no late start either
    assert downloader.publisher.events == [event]


async def test_a_failed_try_announces_its_start_before_its_failure(
    downloader: Downloader, file_server: FileServer
) -> None:
    with pytest.raises(PermanentError):
        await download_file(
            command(file_server.file_url("missing.bin")), downloader.deps, attempt=1
        )

    assert [type(e) for e in downloader.publisher.events] == [FileStarted]


async def test_a_file_without_content_length_downloads(
    downloader: Downloader, file_server: FileServer
) -> None:
    _url, sha = file_server.add_file("chunked.bin", size=500_000)
    event = await download_file(
        command(file_server.file_url("chunked.bin", nolength=1)), downloader.deps, attempt=1
    )
    assert (event.size, event.sha256) == (500_000, sha)


async def test_an_empty_file_downloads(downloader: Downloader, file_server: FileServer) -> None:
    url, sha = file_server.add_file("empty.txt", data=b"")
    event = await download_file(command(url), downloader.deps, attempt=1)
    assert (event.size, event.sha256) == (0, sha)
    assert downloader.objects() == {f"{USER}/{JOB}/empty.txt": b""}


# -- names -----------------------------------------------------------------------------------


async def test_the_name_comes_from_the_url_percent_decoded(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("B04 final.tif", data=b"band 4")
    event = await download_file(
        command(file_server.file_url("B04 final.tif")), downloader.deps, attempt=1
    )
    assert event.filename == "B04 final.tif"
    assert downloader.objects() == {f"{USER}/{JOB}/B04 final.tif": b"band 4"}


async def test_the_name_comes_from_content_disposition(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("blob-123", data=b"pixels")
    event = await download_file(
        command(file_server.file_url("blob-123", cd="T32TQM_B08.jp2")), downloader.deps, attempt=1
    )
    assert event.filename == "T32TQM_B08.jp2"
    assert downloader.objects() == {f"{USER}/{JOB}/T32TQM_B08.jp2": b"pixels"}


async def test_a_traversal_in_content_disposition_stays_inside_the_job(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("blob-9", data=b"payload")
    event = await download_file(
        command(file_server.file_url("blob-9", cd="../../../evil.sh")), downloader.deps, attempt=1
    )
    assert event.filename == "evil.sh"
    assert downloader.objects() == {f"{USER}/{JOB}/evil.sh": b"payload"}
    assert not (downloader.storage.root.parent / "evil.sh").exists()


async def test_the_requested_name_wins(downloader: Downloader, file_server: FileServer) -> None:
    file_server.add_file("blob-5", data=b"x")
    event = await download_file(
        command(file_server.file_url("blob-5", cd="server.tif"), filename="mine.tif"),
        downloader.deps,
        attempt=1,
    )
    assert event.filename == "mine.tif"
    assert event.filepath == f"{USER}/{JOB}/mine.tif"


async def test_the_same_name_twice_in_a_job_gets_distinct_names(
    downloader: Downloader, file_server: FileServer
) -> None:
    url_a, _ = file_server.add_file("a/x.tif", data=b"first")
    url_b, _ = file_server.add_file("b/x.tif", data=b"second")
    url_c, _ = file_server.add_file("c/x.tif", data=b"third")
    first = await download_file(command(url_a), downloader.deps, attempt=1)
    second = await download_file(command(url_b), downloader.deps, attempt=1)
    other_job = await download_file(
        command(url_c, job_id=JobId("job-2")), downloader.deps, attempt=1
    )
    assert (first.filename, second.filename, other_job.filename) == ("x.tif", "x_1.tif", "x.tif")
    assert downloader.objects() == {
        f"{USER}/{JOB}/x.tif": b"first",
        f"{USER}/{JOB}/x_1.tif": b"second",
        f"{USER}/job-2/x.tif": b"third",
    }


async def test_concurrent_files_with_one_name_never_overwrite_each_other(
    downloader: Downloader, file_server: FileServer
) -> None:
    urls = [file_server.add_file(f"{n}/same.tif", data=f"file {n}".encode())[0] for n in range(6)]
    events = await asyncio.gather(
        *(download_file(command(url), downloader.deps, attempt=1) for url in urls)
    )
    names = sorted(e.filename for e in events)
    assert names == ["same.tif", *(f"same_{n}.tif" for n in range(1, 6))]
    stored = downloader.objects()
    assert sorted(stored.values()) == sorted(f"file {n}".encode() for n in range(6))
    for event in events:
        assert hashlib.sha256(stored[event.filepath]).hexdigest() == event.sha256


async def test_long_identical_names_in_one_job_get_distinct_names(
    downloader: Downloader, file_server: FileServer
) -> None:
    long_name = "L" * 250 + ".tif"
    url_a, _ = file_server.add_file("a/blob", data=b"one")
    url_b, _ = file_server.add_file("b/blob", data=b"two")
    first = await download_file(command(url_a, filename=long_name), downloader.deps, attempt=1)
    second = await download_file(command(url_b, filename=long_name), downloader.deps, attempt=1)
    assert first.filename != second.filename
    assert second.filename.endswith("_1.tif")
    assert len(second.filename.encode()) <= 200


# -- idempotence -----------------------------------------------------------------------------


async def test_a_redelivered_complete_file_is_not_fetched_again(
    downloader: Downloader, file_server: FileServer
) -> None:
    url, _ = file_server.add_file("once.tif", size=10_000)
    cmd = command(url)
    first = await download_file(cmd, downloader.deps, attempt=1)
    assert len(file_server.requests_for("/files/once.tif")) == 1
    downloader.publisher.events.clear()

    again = await download_file(cmd, downloader.deps, attempt=2)

    assert again == first
    assert len(file_server.requests_for("/files/once.tif")) == 1
    assert downloader.publisher.events == [first]  # re-announced with the same event id
    assert list(downloader.objects()) == [f"{USER}/{JOB}/once.tif"]


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 403, 410])
async def test_a_final_status_is_permanent_and_leaves_nothing(
    downloader: Downloader, file_server: FileServer, status: int
) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        await download_file(command(file_server.status_url(status)), downloader.deps, attempt=1)
    assert caught.value.status == status
    assert isinstance(caught.value, PermanentError)
    assert downloader.parts() == []
    assert downloader.objects() == {}
    assert downloader.publisher.of(FileDownloaded) == []


async def test_a_missing_file_is_404(downloader: Downloader, file_server: FileServer) -> None:
    with pytest.raises(HTTPStatusError, match="404"):
        await download_file(command(file_server.file_url("nope.tif")), downloader.deps, attempt=1)
    assert downloader.parts() == []


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_s"),
    [(500, None, None), (502, None, None), (503, "7", 7.0), (429, "2", 2.0), (504, "soon", None)],
)
async def test_a_server_error_is_transient(
    downloader: Downloader,
    file_server: FileServer,
    status: int,
    retry_after: str | None,
    expected_s: float | None,
) -> None:
    params = {} if retry_after is None else {"retry_after": retry_after}
    url = file_server.status_url(status, **params)
    with pytest.raises(TransientError) as caught:
        await download_file(command(url), downloader.deps, attempt=1)
    assert caught.value.retry_after_s == expected_s
    assert not isinstance(caught.value, PermanentError)
    assert downloader.objects() == {}
    assert downloader.publisher.of(FileDownloaded) == []


async def test_a_flaky_server_succeeds_on_the_next_try(
    downloader: Downloader, file_server: FileServer
) -> None:
    _url, sha = file_server.add_file("flaky.tif", size=5000)
    cmd = command(file_server.flaky_url("flaky.tif", fail=1, code=503))
    with pytest.raises(TransientError):
        await download_file(cmd, downloader.deps, attempt=1)
    event = await download_file(cmd, downloader.deps, attempt=2)
    assert event.sha256 == sha
    assert event.filename == "flaky.tif"


async def test_a_cut_download_resumes_where_it_stopped(
    downloader: Downloader, file_server: FileServer
) -> None:
    _url, sha = file_server.add_file("cut.bin", size=1_000_000)
    cmd = command(file_server.file_url("cut.bin", abort_after=400_000))
    event = None
    for attempt in range(1, 7):
        try:
            event = await download_file(cmd, downloader.deps, attempt=attempt)
            break
        except TransientError:
            assert downloader.objects() == {}
    assert event is not None, "no attempt finished"

    assert (event.size, event.sha256) == (1_000_000, sha)
    source = (file_server.root / "cut.bin").read_bytes()
    assert downloader.objects() == {f"{USER}/{JOB}/cut.bin": source}
    assert downloader.parts() == []
    first, *rest = file_server.requests_for("/files/cut.bin")
    assert first.range is None
    assert rest, "the first attempt cannot have finished"
    etag = first.response_headers["ETag"]
    offsets = [int(r.range.removeprefix("bytes=").removesuffix("-")) for r in rest if r.range]
    assert len(offsets) == len(rest)
    assert all(r.if_range == etag and r.status == 206 for r in rest)
    # Each attempt starts where the kept part ends, further on every time.
    assert offsets == sorted(set(offsets))
    assert offsets[0] > 0


async def test_a_small_cut_file_is_fetched_whole_again_not_resumed(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("small.bin", size=100_000)
    cmd = command(file_server.file_url("small.bin", abort_after=40_000))
    for attempt in (1, 2):
        with pytest.raises(TransientError):
            await download_file(cmd, downloader.deps, attempt=attempt)

    first, second = file_server.requests_for("/files/small.bin")
    # Below 256 KiB no resume record is kept: the next try asks for the whole file again.
    assert (first.range, second.range) == (None, None)


async def test_a_changed_file_is_downloaded_again_not_spliced(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("moving.bin", size=600_000, seed=1)
    cmd = command(file_server.file_url("moving.bin", abort_after=250_000))
    with pytest.raises(TransientError):
        await download_file(cmd, downloader.deps, attempt=1)
    _url, new_sha = file_server.add_file("moving.bin", size=200_000, seed=2)  # new ETag

    event = await download_file(cmd, downloader.deps, attempt=2)

    assert (event.size, event.sha256) == (200_000, new_sha)
    second = file_server.requests_for("/files/moving.bin")[1]
    assert second.range is not None  # it asked to resume, If-Range said no
    assert second.status == 200


async def test_without_a_validator_a_download_starts_over(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("plain.bin", size=500_000)
    cmd = command(file_server.file_url("plain.bin", noetag=1, abort_after=300_000))
    for attempt in (1, 2):
        with pytest.raises(TransientError):
            await download_file(cmd, downloader.deps, attempt=attempt)
    # No ETag or Last-Modified: nothing proves the bytes kept belong to today's file.
    assert [r.range for r in file_server.requests_for("/files/plain.bin")] == [None, None]


async def test_a_permanent_error_after_a_cut_discards_the_kept_part(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("doomed.bin", size=500_000)
    wrong = hashlib.sha256(b"other").hexdigest()
    cmd = command(file_server.file_url("doomed.bin", abort_after=200_000), sha256=wrong)
    for attempt in (1, 2):
        with pytest.raises(TransientError):
            await download_file(cmd, downloader.deps, attempt=attempt)
        assert downloader.parts() != []
    with pytest.raises(ChecksumMismatch):
        await download_file(cmd, downloader.deps, attempt=3)
    assert downloader.parts() == []
    assert downloader.objects() == {}


async def test_a_download_over_its_deadline_is_transient(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    downloader = make_downloader(file_deadline_s=0.3)
    file_server.add_file("slow.bin", size=1_000_000)
    began = time.monotonic()
    with pytest.raises(TransientError, match="deadline"):
        await download_file(
            command(file_server.file_url("slow.bin", rate=200_000)), downloader.deps, attempt=1
        )
    assert time.monotonic() - began < 1.5
    assert downloader.objects() == {}


async def test_a_checksum_mismatch_stores_nothing(
    downloader: Downloader, file_server: FileServer
) -> None:
    url, sha = file_server.add_file("tampered.tif", size=20_000)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumMismatch) as caught:
        await download_file(command(url, sha256=wrong), downloader.deps, attempt=1)
    assert isinstance(caught.value, PermanentError)
    assert sha in str(caught.value)
    assert downloader.objects() == {}
    assert downloader.parts() == []
    assert downloader.publisher.of(FileDownloaded) == []


@pytest.mark.parametrize("params", [{}, {"nolength": 1}], ids=["content-length", "chunked"])
async def test_a_file_over_the_size_limit_is_refused(
    make_downloader: MakeDownloader, file_server: FileServer, params: dict[str, int]
) -> None:
    downloader = make_downloader(max_size_bytes=100_000)
    file_server.add_file("big.bin", size=1_000_000)
    with pytest.raises(TooLarge):
        await download_file(
            command(file_server.file_url("big.bin", **params)), downloader.deps, attempt=1
        )
    assert downloader.objects() == {}
    assert downloader.parts() == []


async def test_a_file_at_the_size_limit_is_accepted(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    downloader = make_downloader(max_size_bytes=100_000)
    url, sha = file_server.add_file("exact.bin", size=100_000)
    event = await download_file(command(url), downloader.deps, attempt=1)
    assert (event.size, event.sha256) == (100_000, sha)


# -- redirects -------------------------------------------------------------------------------


@pytest.mark.parametrize("hops", [1, 3])
async def test_redirects_within_the_limit_are_followed(
    downloader: Downloader, file_server: FileServer, hops: int
) -> None:
    url, sha = file_server.add_file("target.tif", size=1000)
    event = await download_file(
        command(file_server.redirect_url(url, n=hops, code=302)), downloader.deps, attempt=1
    )
    assert (event.filename, event.sha256) == ("target.tif", sha)
    assert len(file_server.requests_for("/redirect")) == hops


async def test_too_many_redirects_are_permanent(
    downloader: Downloader, file_server: FileServer
) -> None:
    url, _ = file_server.add_file("target.tif", size=1000)
    with pytest.raises(PermanentError, match="redirect"):
        await download_file(command(file_server.redirect_url(url, n=4)), downloader.deps, attempt=1)
    assert file_server.requests_for("/files/target.tif") == []
    assert downloader.parts() == []


async def test_a_redirect_to_another_scheme_is_refused(
    downloader: Downloader, file_server: FileServer
) -> None:
    with pytest.raises(PermanentError, match="only http"):
        await download_file(
            command(file_server.redirect_url("file:///etc/passwd")), downloader.deps, attempt=1
        )
    assert downloader.objects() == {}


async def test_a_non_http_url_is_refused(downloader: Downloader) -> None:
    with pytest.raises(PermanentError):
        await download_file(command("ftp://127.0.0.1/x.tif"), downloader.deps, attempt=1)


# -- the address guard on real requests ------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["literal", "name"])
async def test_the_guard_refuses_loopback_before_any_request(
    make_downloader: MakeDownloader, file_server: FileServer, host: str
) -> None:
    downloader = make_downloader(allow_private=False)
    file_server.add_file("a.tif", data=b"secret")
    url = f"http://{host}:{file_server.port}/files/a.tif"
    with pytest.raises(BlockedAddress):
        await download_file(command(url), downloader.deps, attempt=1)
    assert file_server.requests == []
    assert downloader.objects() == {}
    assert downloader.parts() == []
    assert downloader.publisher.of(FileStarted) != []  # it was tried, and refused at connect


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.0.0.1"])
async def test_odd_spellings_of_loopback_are_refused_before_any_request(
    make_downloader: MakeDownloader, file_server: FileServer, host: str
) -> None:
    # aiohttp refuses non-canonical IPv4 outright; the guard never has to parse them.
    downloader = make_downloader(allow_private=False)
    file_server.add_file("a.tif", data=b"secret")
    with pytest.raises(PermanentError):
        await download_file(
            command(f"http://{host}:{file_server.port}/files/a.tif"), downloader.deps, attempt=1
        )
    assert file_server.requests == []


async def test_an_allowed_network_lets_only_its_addresses_through(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    downloader = make_downloader(allow_private=False, allowed_networks=["127.0.0.1/32"])
    url, sha = file_server.add_file("a.tif", size=2000)
    event = await download_file(command(url), downloader.deps, attempt=1)
    assert event.sha256 == sha

    file_server.reset_requests()
    other = f"http://127.0.0.2:{file_server.port}/files/a.tif"
    with pytest.raises(PermanentError) as caught:
        await download_file(command(other), downloader.deps, attempt=1)
    # Refused by the guard, not by a failed connection (which would be transient).
    assert isinstance(caught.value, BlockedAddress)
    assert file_server.requests == []


async def test_a_redirect_to_a_blocked_address_is_refused(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    downloader = make_downloader(allow_private=False, allowed_networks=["127.0.0.1/32"])
    file_server.add_file("a.tif", data=b"secret")
    inside = f"http://127.0.0.2:{file_server.port}/files/a.tif"
    with pytest.raises(PermanentError) as caught:
        await download_file(command(file_server.redirect_url(inside)), downloader.deps, attempt=1)
    assert isinstance(caught.value, BlockedAddress)
    assert [r.path for r in file_server.requests] == ["/redirect"]


async def test_names_are_checked_once_resolved_on_every_hop(
    make_downloader: MakeDownloader, file_server: FileServer
) -> None:
    resolver = StaticResolver({"files.test": "127.0.0.1", "internal.test": "127.0.0.2"})
    downloader = make_downloader(
        allow_private=False, allowed_networks=["127.0.0.1/32"], resolver=resolver
    )
    _url, sha = file_server.add_file("a.tif", size=1000)
    public = f"http://files.test:{file_server.port}/files/a.tif"
    inside = f"http://internal.test:{file_server.port}/files/a.tif"

    event = await download_file(command(public), downloader.deps, attempt=1)
    assert event.sha256 == sha

    file_server.reset_requests()
    with pytest.raises(BlockedAddress, match=r"internal\.test"):
        await download_file(command(inside), downloader.deps, attempt=1)
    assert file_server.requests == []

    hop = f"http://files.test:{file_server.port}/redirect?{urlencode({'to': inside})}"
    with pytest.raises(BlockedAddress, match=r"internal\.test"):
        await download_file(command(hop), downloader.deps, attempt=1)
    assert [r.path for r in file_server.requests] == ["/redirect"]


# -- cancellation ----------------------------------------------------------------------------


async def test_a_cancel_aborts_a_running_download_within_a_second(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("huge.bin", size=2_000_000)
    cmd = command(file_server.file_url("huge.bin", rate=200_000))  # ~10 s
    task = asyncio.create_task(download_file(cmd, downloader.deps, attempt=1))
    deadline = time.monotonic() + 5
    while not downloader.publisher.of(FileProgress):
        assert time.monotonic() < deadline, "the download never progressed"
        await asyncio.sleep(0.02)

    async def cancel_from_elsewhere() -> None:
        downloader.cancellations.cancel(cmd.job_id)

    cancelled_at = time.monotonic()
    await asyncio.create_task(cancel_from_elsewhere())
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(task, 1.0)
    assert time.monotonic() - cancelled_at < 1.0
    assert downloader.parts() == []
    assert downloader.objects() == {}
    assert downloader.publisher.of(FileDownloaded) == []
    assert await downloader.deps.completions.get(cmd.file_id) is None


async def test_a_cancel_published_on_the_channel_reaches_the_download(
    downloader: Downloader, file_server: FileServer
) -> None:
    file_server.add_file("huge.bin", size=2_000_000)
    cmd = command(file_server.file_url("huge.bin", rate=200_000))
    listener = asyncio.create_task(downloader.cancellations.listen())
    try:
        task = asyncio.create_task(download_file(cmd, downloader.deps, attempt=1))
        deadline = time.monotonic() + 5
        while not downloader.publisher.of(FileProgress):
            assert time.monotonic() < deadline, "the download never progressed"
            await asyncio.sleep(0.02)
        await downloader.redis.publish(CANCEL_CHANNEL, cmd.job_id)
        with pytest.raises(JobCancelled):
            await asyncio.wait_for(task, 1.0)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    assert downloader.parts() == []


async def test_a_cancel_of_another_job_changes_nothing(
    downloader: Downloader, file_server: FileServer
) -> None:
    _url, sha = file_server.add_file("a.bin", size=300_000)
    cmd = command(file_server.file_url("a.bin", rate=1_000_000))
    task = asyncio.create_task(download_file(cmd, downloader.deps, attempt=1))
    await asyncio.sleep(0.1)
    downloader.cancellations.cancel("job-other")
    event = await asyncio.wait_for(task, 5)
    assert event.sha256 == sha


async def test_a_cancelled_job_is_skipped_before_any_request(
    downloader: Downloader, file_server: FileServer
) -> None:
    url, _ = file_server.add_file("a.tif", size=1000)
    cmd = command(url)
    assert not await downloader.cancellations.is_cancelled(cmd.job_id)
    await downloader.redis.set(cancelled_key(cmd.job_id), b"1")
    assert await downloader.cancellations.is_cancelled(cmd.job_id)
    with pytest.raises(JobCancelled):
        await download_file(cmd, downloader.deps, attempt=1)
    assert file_server.requests == []
    assert downloader.publisher.events == []


# -- the dead-letter event -------------------------------------------------------------------


def test_failure_event_says_whether_the_failure_was_permanent() -> None:
    cmd = command("http://127.0.0.1:9/x.tif")
    permanent = failure_event(cmd, HTTPStatusError(404, cmd.url), attempts=1)
    transient = failure_event(cmd, TransientError("reset"), attempts=3)
    assert isinstance(permanent, FileFailed)
    assert (permanent.file_id, permanent.permanent, permanent.attempts) == (cmd.file_id, True, 1)
    assert "404" in permanent.error
    assert (transient.permanent, transient.attempts, transient.error) == (False, 3, "reset")
    assert failure_event(cmd, TransientError(""), attempts=1).error == "TransientError"


# -- big bodies ------------------------------------------------------------------------------


async def _serve_in_odd_chunks(body: bytes) -> tuple[web.AppRunner, str]:
    """A loopback server sending `body` in uneven writes, 10 ms apart."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(body)
        await response.prepare(request)
        sizes = itertools.cycle([1, 65_537, 300_001, 7, 1_048_579, 4_099])
        offset = 0
        while offset < len(body):
            step = next(sizes)
            await response.write(body[offset : offset + step])
            offset += step
            await asyncio.sleep(0.01)
        return response

    app = web.Application()
    app.router.add_get("/odd.bin", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/odd.bin"


async def test_a_body_of_many_blocks_in_odd_chunks_is_stored_whole_with_throttled_progress(
    downloader: Downloader,
) -> None:
    body = random.Random(7).randbytes(5 * 1024 * 1024 + 17)
    runner, url = await _serve_in_odd_chunks(body)
    try:
        event = await download_file(command(url), downloader.deps, attempt=1)
    finally:
        await runner.cleanup()

    assert (event.size, event.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert downloader.objects() == {f"{USER}/{JOB}/odd.bin": body}
    progress = downloader.publisher.of(FileProgress)
    assert len(progress) >= 2, "the body takes ~0.25 s, reports come every 0.05 s"
    interval = downloader.deps.limits.progress_interval_s
    gaps = [b.at - a.at for a, b in itertools.pairwise(progress)]
    assert all(gap >= interval * 0.9 for gap in gaps), gaps
    assert [p.bytes_downloaded for p in progress] == sorted(p.bytes_downloaded for p in progress)
