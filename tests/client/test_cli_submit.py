"""`downlink submit --wait` and `downlink export` as a person runs them, against a real stack: a
gateway, a downloader and an exporter as processes, a throttled loopback file server, and a
recording proxy between the command and the gateway (to count its requests, and to drop its
event stream mid-job)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from typing import TYPE_CHECKING

import pytest

from tests.client.gateway_proxy import GatewayProxy
from tests.tasks.conftest import ROOT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import httpx

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

KIB = 1024
MIB = 1024 * KIB


def _env(url: str, token: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DOWNLINK_URL": url, "DOWNLINK_TOKEN": token, "COLUMNS": "200", **extra}


def run_cli(*argv: str, url: str, token: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`downlink ARGV` with the gateway and token from the environment, as a user sets them."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(url, token, **env),
        timeout=120,
        check=False,
    )


def start_cli(*argv: str, url: str, token: str) -> subprocess.Popen[str]:
    """`downlink ARGV` running, its output readable line by line as it is printed."""
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_env(url, token),
    )


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    stack = pipeline_factory(DOWNLINK_RETRY_BACKOFF="0.2")
    stack.start_downloader()
    return stack


@pytest.fixture
def token(stack: Pipeline) -> str:
    return stack.token("alice")


@pytest.fixture
def alice(stack: Pipeline, token: str) -> httpx.Client:
    """Alice's own API client, straight to the gateway (not through the proxy)."""
    import httpx

    client = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, trust_env=False
    )
    stack.clients.append(client)
    return client


@pytest.fixture
def proxy(stack: Pipeline) -> Iterator[GatewayProxy]:
    """The gateway behind a recording proxy that drops the first event stream after 3 events."""
    with GatewayProxy(stack.url, cut_first_stream_after=3) as proxy:
        yield proxy


def _job_id(line: str) -> str:
    found = re.search(r"job ([0-9a-f-]{36})", line)
    assert found, line
    return found.group(1)


def test_submit_wait_draws_progress_from_the_event_stream_and_never_polls(
    stack: Pipeline,
    token: str,
    alice: httpx.Client,
    proxy: GatewayProxy,
    file_server: FileServer,
) -> None:
    _, big_sha = file_server.add_file("big.bin", size=12 * MIB)
    big = file_server.file_url("big.bin", rate=3 * MIB)
    small = [file_server.add_file(f"small-{n}.bin", size=100 * KIB) for n in range(2)]
    missing = file_server.status_url(404)

    cli = start_cli(
        "submit", big, *(u for u, _ in small), missing, "--wait", url=proxy.url, token=token
    )
    assert cli.stdout is not None
    job_id = _job_id(cli.stdout.readline())
    lines: list[str] = []
    while not re.match(r"big\.bin: \S+ MB of 12\.6 MB", line := cli.stdout.readline()):
        assert line, f"no progress line for big.bin before the output ended: {lines}"
        lines.append(line)
    # The bytes are moving while the job still runs: the line came from the stream, live.
    assert alice.get(f"/api/v1/downloads/jobs/{job_id}").json()["status"] == "in_progress"
    rest, errors = cli.communicate(timeout=60)
    output = "".join(lines) + line + rest

    assert cli.returncode == 1, output + errors  # partial
    assert "small-0.bin: stored (102.4 kB)" in output
    assert "big.bin: stored (12.6 MB)" in output
    assert "job partial" in output
    summary = re.search(r"partial: 3 stored, 1 failed, ([\d.]+) MB in [\d.]+ s", output)
    assert summary, output
    assert summary.group(1) == "12.8"
    result = alice.get(f"/api/v1/downloads/jobs/{job_id}/result").json()
    [failure] = [f for f in result["results"] if f["status"] == "failed"]
    assert f"  failed {missing}: {failure['error']}" in output
    served = {"big.bin": big_sha} | {f"small-{n}.bin": sha for n, (_, sha) in enumerate(small)}
    stored = {
        f["filename"]: hashlib.sha256((stack.storage_root / f["filepath"]).read_bytes()).hexdigest()
        for f in result["results"]
        if f["status"] == "completed"
    }
    assert stored == served

    paths = [(s.method, s.path) for s in proxy.seen]
    assert ("GET", f"/api/v1/downloads/jobs/{job_id}") not in paths  # no status polling
    streams = [s for s in proxy.seen if s.path.endswith("/events")]
    assert len(streams) >= 2, paths  # the first one was cut after 3 events
    assert streams[0].last_event_id is None
    assert streams[1].last_event_id is not None
    assert int(streams[1].last_event_id) > 0


def test_a_terminal_gets_bars_and_export_saves_a_checked_archive(
    stack: Pipeline, token: str, alice: httpx.Client, file_server: FileServer, tmp_path: Path
) -> None:
    stack.start_exporter()
    files = {
        "scene.tif": file_server.add_file("scene.tif", size=10 * MIB),
        "band.tif": file_server.add_file("band.tif", size=300 * KIB),
    }
    urls = [file_server.file_url("scene.tif", rate=4 * MIB), files["band.tif"][0]]
    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}

    done = run_cli("submit", *urls, "--wait", url=stack.url, token=token, **terminal)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "\x1b[" in done.stdout  # drawn with a terminal's escapes
    assert "━" in done.stdout  # bars
    assert "scene.tif stored" in done.stdout  # its own bar, labelled when it ended
    assert "2/2 files" in done.stdout
    assert re.search(r"completed: 2 stored, 0 failed, 10\.8 MB in [\d.]+ s", done.stdout)
    job_id = _job_id(done.stdout)

    archive = tmp_path / "out" / "job.tar.gz"
    archive.parent.mkdir()
    saved = run_cli(
        "export", job_id, "-o", str(archive), "--format", "tar.gz", url=stack.url, token=token
    )
    assert saved.returncode == 0, saved.stdout + saved.stderr
    export_id = re.search(r"export ([0-9a-f-]{36}) queued: 2 file\(s\)", saved.stdout)
    assert export_id, saved.stdout
    recorded = alice.get(f"/api/v1/downloads/exports/{export_id.group(1)}").json()
    on_disk = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert on_disk == recorded["hash"]
    assert f"saved {archive} ({recorded['size']} bytes, 2 file(s), sha256 {on_disk})" in (
        saved.stdout.replace("\n", "")
    )
    assert [p.name for p in archive.parent.iterdir()] == ["job.tar.gz"]  # no temp file left
    with tarfile.open(archive) as tar:
        members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for name, (_, sha) in files.items():
            extracted = tar.extractfile(members[name])
            assert extracted is not None
            assert hashlib.sha256(extracted.read()).hexdigest() == sha

    as_json = run_cli("export", job_id, "-o", str(tmp_path / "again.zip"), "--json",
                      url=stack.url, token=token)  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["sha256"] == hashlib.sha256((tmp_path / "again.zip").read_bytes()).hexdigest()
    assert body["file_count"] == 2


def test_ctrl_c_leaves_the_job_running_and_exits_130(
    stack: Pipeline, token: str, alice: httpx.Client, file_server: FileServer
) -> None:
    file_server.add_file("slow.bin", size=9 * MIB)
    slow = file_server.file_url("slow.bin", rate=2 * MIB)
    cli = start_cli("submit", slow, "--wait", url=stack.url, token=token)
    assert cli.stdout is not None
    job_id = _job_id(cli.stdout.readline())
    while not cli.stdout.readline().startswith("slow.bin: "):
        pass
    cli.send_signal(signal.SIGINT)
    _, errors = cli.communicate(timeout=20)

    assert cli.returncode == 130
    assert f"interrupted: job {job_id} keeps running" in errors
    assert alice.get(f"/api/v1/downloads/jobs/{job_id}").json()["status"] == "in_progress"
    assert stack.wait_job(alice, job_id, timeout=30)["status"] == "completed"


def test_bad_input_is_refused_by_name_and_nothing_is_written(
    stack: Pipeline, token: str, tmp_path: Path
) -> None:
    nothing = run_cli("submit", "--wait", url=stack.url, token=token)
    assert nothing.returncode == 1
    assert "nothing to submit" in nothing.stderr

    bad = run_cli(
        "submit", "ftp://example.invalid/x", "--priority", "11", url=stack.url, token=token
    )
    assert bad.returncode == 1
    assert "400: priority:" in bad.stderr

    out = tmp_path / "out"
    out.mkdir()
    target = out / "never.zip"
    unknown = "00000000-0000-0000-0000-000000000000"
    gone = run_cli("export", unknown, "-o", str(target), url=stack.url, token=token)
    assert gone.returncode == 1
    assert "404" in gone.stderr
    assert list(out.iterdir()) == []

    listed = run_cli("jobs", "--json", url=stack.url, token=token)
    assert json.loads(listed.stdout)["jobs"] == []
    status = run_cli("status", unknown, url=stack.url, token=token)
    assert status.returncode == 1
    assert "404" in status.stderr
