"""`downlink queues`, `downlink dead-letters list | retry | discard` and `downlink retry-failed`
against a real gateway and downloader: files dead-lettered by a loopback server answering 500,
re-driven by filter once it heals, discarded, and the tables and JSON the commands print."""

from __future__ import annotations

import json
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.client.test_schedules import run_cli

if TYPE_CHECKING:
    import httpx

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

FAST = {
    "DOWNLINK_CLAIM_IDLE": "3",
    "DOWNLINK_RETRY_BACKOFF": "0.2",
    "DOWNLINK_RECONCILE_INTERVAL": "1",
    "DOWNLINK_SHUTDOWN_GRACE": "5",
}


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    return stack


def _job_of_failing_file(
    stack: Pipeline, client: httpx.Client, file_server: FileServer, name: str
) -> str:
    """A job whose one file answers 500 for all its tries (3), then heals; once it ended."""
    file_server.add_file(name, size=1024)
    url = file_server.flaky_url(name, fail=3)
    response = client.post("/api/v1/downloads/download", json={"urls": [url]})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    assert stack.wait_job(client, job_id, timeout=60)["status"] == "failed"
    return job_id


def _letters(admin: httpx.Client, job_id: str, timeout_s: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        listed = admin.get("/api/v1/dead-letters", params={"job_id": job_id}).json()
        if listed["dead_letters"] or time.monotonic() > deadline:
            return list(listed["dead_letters"])
        time.sleep(0.1)


def test_dead_letters_are_listed_retried_by_filter_and_discarded(
    stack: Pipeline, file_server: FileServer
) -> None:
    alice = stack.client("alice")
    admin_client = stack.client("root", admin=True)
    admin = stack.token("root", admin=True)
    healed = _job_of_failing_file(stack, alice, file_server, "healed.bin")
    dropped = _job_of_failing_file(stack, alice, file_server, "dropped.bin")
    (healed_letter,) = _letters(admin_client, healed)
    (dropped_letter,) = _letters(admin_client, dropped)

    def cli(*argv: str, token: str = admin, answer: str = "") -> subprocess.CompletedProcess[str]:
        return run_cli(*argv, url=stack.url, token=token, stdin=answer)

    refused = cli("dead-letters", "list", token=stack.token("alice"))
    assert (refused.returncode, "403" in refused.stderr) == (1, True)

    table = cli("dead-letters", "list", "--filter", "kind=download")
    assert table.returncode == 0, table.stderr
    assert "2 of 2 dead letter(s)" in table.stdout
    assert healed_letter["id"] in table.stdout
    assert "HTTP 500" in table.stdout
    listed = json.loads(
        cli("dead-letters", "list", "--json", "--filter", f"job_id={healed}").stdout
    )
    assert [letter["id"] for letter in listed["dead_letters"]] == [healed_letter["id"]]
    assert listed["dead_letters"][0]["kind"] == "download"
    bad = cli("dead-letters", "list", "--filter", "colour=red")
    assert (bad.returncode, "colour=red" in bad.stderr) == (1, True)

    only_healed = ("--all", "--filter", f"job_id={healed}", "--filter", "error=500")
    declined = cli("dead-letters", "retry", *only_healed, answer="n\n")
    assert declined.returncode == 1
    assert "nothing re-driven" in declined.stderr
    assert "Re-drive 1 dead letter(s) matching" in declined.stdout
    assert len(_letters(admin_client, healed)) == 1

    retried = cli("dead-letters", "retry", *only_healed, "--yes")
    assert retried.returncode == 0, retried.stderr
    assert "1 letter(s) re-driven, 0 skipped" in retried.stdout
    # The server answers 200 from now on: the re-driven file completes; the other stays failed.
    assert stack.wait_job(alice, healed, timeout=30)["status"] == "completed"
    assert alice.get(f"/api/v1/downloads/jobs/{dropped}").json()["status"] == "failed"
    again = cli("dead-letters", "retry", healed_letter["id"])
    assert (again.returncode, "404" in again.stderr) == (1, True)

    discarded = cli("dead-letters", "discard", dropped_letter["id"], "--json")
    assert discarded.returncode == 0, discarded.stderr
    assert json.loads(discarded.stdout)["ids"] == [dropped_letter["id"]]
    assert _letters(admin_client, dropped, timeout_s=0) == []
    assert alice.get(f"/api/v1/downloads/jobs/{dropped}").json()["status"] == "failed"

    # The owner, not an admin, retries the job's failed file itself.
    mine = cli("retry-failed", dropped, token=stack.token("alice"))
    assert mine.returncode == 0, mine.stderr
    assert f"job {dropped}: 1 failed file(s) queued again" in mine.stdout
    assert stack.wait_job(alice, dropped, timeout=30)["status"] == "completed"


def test_queues_prints_every_stream_and_group(stack: Pipeline) -> None:
    admin = stack.token("root", admin=True)

    table = run_cli("queues", url=stack.url, token=admin)
    report = json.loads(run_cli("queues", "--json", url=stack.url, token=admin).stdout)

    assert table.returncode == 0, table.stderr
    assert "downlink:downloads:high" in table.stdout
    assert "downloader" in table.stdout
    assert "oldest pending" in table.stdout
    rows = {(row["stream"], row["group"]) for row in report["queues"]}
    assert ("downlink:downloads:normal", "downloader") in rows
    assert report["dead_letters"] == 0
    refused = run_cli("queues", url=stack.url, token=stack.token("alice"))
    assert (refused.returncode, "403" in refused.stderr) == (1, True)
