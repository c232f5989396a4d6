"""The dashboard in a real browser against a real stack: sign-in, the jobs list, a job's live
page, cancel, the CSRF and ownership checks, logout. Screenshots go to docs/screenshots/."""

from __future__ import annotations

import hashlib
import re
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import expect

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.integration.conftest import Pipeline
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

KIB = 1024
MIB = 1024 * KIB
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _sign_in(page: Page, pipeline: Pipeline, token: str) -> None:
    page.goto(f"{pipeline.url}/dashboard/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{pipeline.url}/dashboard")


def _submit(client: httpx.Client, urls: list[str], **extra: object) -> str:
    response = client.post("/api/v1/downloads/download", json={"urls": urls, **extra})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _open(page: Page, url: str) -> int:
    """Load `url` in the page; the status it answered with."""
    response = page.goto(url)
    assert response is not None
    return response.status


def _bar_value(page: Page) -> float:
    value: float = page.locator("tr[data-file-id] progress").first.evaluate("bar => bar.value")
    return value


def test_sign_in_shows_the_overview_and_logout_ends_the_session(
    pipeline: Pipeline, file_server: FileServer, page: Page
) -> None:
    pipeline.start_downloader()
    admin = pipeline.client("ops", admin=True)
    urls = [file_server.add_file(f"tile-{i}.tif", size=MIB)[0] for i in range(6)]
    done = _submit(admin, urls, metadata={"mission": "sentinel-2"})
    assert pipeline.wait_job(admin, done)["status"] == "completed"

    page.goto(f"{pipeline.url}/dashboard/jobs")
    expect(page).to_have_url(f"{pipeline.url}/dashboard/login")
    page.fill("#token", "dl_not-a-token")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("invalid or revoked")

    _sign_in(page, pipeline, pipeline.token("ops", admin=True))
    expect(page.locator(".who")).to_have_text("ops · admin")
    # Admins see the lanes and the live workers: the gateway and the downloader.
    expect(page.get_by_role("heading", name="Live workers")).to_be_visible()
    expect(page.locator("td", has_text="downloader").first).to_be_visible()
    expect(page.locator("td", has_text="downlink:downloads:normal").first).to_be_visible()
    # The six files just stored show in the last minute of the throughput charts.
    expect(page.locator(".chart figcaption").first).to_contain_text("files/s this minute")
    expect(page.locator(".chart figcaption").first).not_to_contain_text("peak 0.00")
    expect(page.locator("#job-counts")).to_contain_text("completed 1")
    page.screenshot(path=str(SCREENSHOTS / "overview.png"), full_page=True)
    cookie = next(c for c in page.context.cookies() if c["name"] == "downlink_session")
    assert cookie["httpOnly"]
    assert (cookie["sameSite"], cookie["path"]) == ("Strict", "/dashboard")

    page.click("text=Log out")
    expect(page).to_have_url(f"{pipeline.url}/dashboard/login")
    page.goto(f"{pipeline.url}/dashboard/jobs")
    expect(page).to_have_url(f"{pipeline.url}/dashboard/login")
    # The old cookie is dead on the server, not only dropped by this browser.
    replayed = httpx.get(
        f"{pipeline.url}/dashboard/jobs",
        cookies={"downlink_session": cookie["value"]},
        follow_redirects=False,
        trust_env=False,
    )
    assert replayed.status_code == 303
    assert replayed.headers["location"] == "/dashboard/login"


def test_a_job_shows_up_moves_and_is_cancelled_from_its_page(
    pipeline: Pipeline, file_server: FileServer, page: Page
) -> None:
    pipeline.start_downloader()
    alice = pipeline.client("alice")
    _sign_in(page, pipeline, pipeline.token("alice"))
    page.goto(f"{pipeline.url}/dashboard/jobs")
    file_server.add_file("slow.tif", size=8 * MIB)
    url = file_server.file_url("slow.tif", rate=512 * KIB)

    job_id = _submit(alice, [url], metadata={"scene": "T32UNE"})
    submitted = time.monotonic()
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=2_000)
    assert time.monotonic() - submitted < 2.0

    row.locator("a").click()
    expect(page.locator("#job-status")).to_be_visible()
    bar = page.locator("tr[data-file-id] progress").first
    expect(bar).to_have_attribute("max", str(8 * MIB), timeout=5_000)
    first = _bar_value(page)
    page.wait_for_function(
        f"() => document.querySelector('tr[data-file-id] progress').value > {first} + 262144"
    )
    expect(page.locator("tr[data-file-id] [data-role=state]")).to_have_text("downloading")
    expect(page.locator("#timeline")).to_contain_text("file.started")
    page.screenshot(path=str(SCREENSHOTS / "job-in-progress.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SCREENSHOTS / "job-in-progress-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    (transfer,) = [r for r in file_server.requests if r.path == "/files/slow.tif"]
    assert not transfer.done
    page.click("text=Cancel job")
    clicked = time.monotonic()
    while not transfer.done:
        assert time.monotonic() - clicked < 1.0, "the download outlived its cancel by 1 s"
        time.sleep(0.01)
    assert alice.get(f"/api/v1/downloads/jobs/{job_id}").json()["status"] == "cancelled"
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator("#cancel-form")).to_be_hidden()


def test_another_users_job_is_404_and_a_post_without_csrf_is_403(
    pipeline: Pipeline, page: Page
) -> None:
    # No downloader: both jobs stay pending, so a cancel would still be allowed.
    alice = pipeline.client("alice")
    bob = pipeline.client("bob")
    own = _submit(alice, ["http://127.0.0.1:9/a.bin"])
    others = _submit(bob, ["http://127.0.0.1:9/b.bin"])
    _sign_in(page, pipeline, pipeline.token("alice"))
    # A user sees no lane or worker: those are for admins.
    expect(page.get_by_role("heading", name="Jobs by state")).to_be_visible()
    expect(page.get_by_role("heading", name="Live workers")).to_have_count(0)

    page.goto(f"{pipeline.url}/dashboard/jobs")
    expect(page.locator(f'tr[data-job-id="{own}"]')).to_be_visible()
    expect(page.locator(f'tr[data-job-id="{others}"]')).to_have_count(0)
    assert _open(page, f"{pipeline.url}/dashboard/jobs/{others}") == 404
    expect(page.locator("h1")).to_have_text("404")
    assert page.request.get(f"{pipeline.url}/dashboard/jobs/{others}/events").status == 404
    css = page.request.get(f"{pipeline.url}/dashboard/static/dashboard.css")
    assert (css.status, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert page.request.get(f"{pipeline.url}/dashboard/static/sessions.py").status == 404

    page.goto(f"{pipeline.url}/dashboard/jobs/{own}")
    cancel = f"{pipeline.url}/dashboard/jobs/{own}/cancel"
    assert page.request.post(cancel, form={}, max_redirects=0).status == 403
    assert page.request.post(cancel, form={"csrf_token": "forged"}, max_redirects=0).status == 403
    assert alice.get(f"/api/v1/downloads/jobs/{own}").json()["status"] == "pending"
    # The form's own token goes through.
    page.click("text=Cancel job")
    expect(page.locator("#job-status")).to_have_text("cancelled")
    assert alice.get(f"/api/v1/downloads/jobs/{own}").json()["status"] == "cancelled"
    # Bob's job cannot be cancelled through Alice's session, CSRF token or not.
    token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    forged = page.request.post(
        f"{pipeline.url}/dashboard/jobs/{others}/cancel", form={"csrf_token": token}
    )
    assert forged.status == 404
    assert bob.get(f"/api/v1/downloads/jobs/{others}").json()["status"] == "pending"


def test_the_jobs_list_filters_by_status_priority_and_metadata(
    pipeline: Pipeline, page: Page
) -> None:
    alice = pipeline.client("alice")
    red = _submit(alice, ["http://127.0.0.1:9/r.bin"], priority=9, metadata={"tag": "Red_50%"})
    blue = _submit(alice, ["http://127.0.0.1:9/b.bin"], priority=2, metadata={"tag": "blue"})
    _sign_in(page, pipeline, pipeline.token("alice"))

    def shown(query: str) -> set[str]:
        page.goto(f"{pipeline.url}/dashboard/jobs?{query}")
        return set(
            page.locator("tr[data-job-id]").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
        )

    assert shown("") == {red, blue}
    assert shown("text=red_50%25") == {red}
    assert shown("priority=2") == {blue}
    assert shown("status=pending&priority=9") == {red}
    assert shown("status=completed") == set()
    assert _open(page, f"{pipeline.url}/dashboard/jobs?priority=11") == 400
    expect(page.locator(".error")).to_contain_text("priority")
    assert _open(page, f"{pipeline.url}/dashboard/jobs?user=bob") == 400
    expect(page.locator(".error")).to_contain_text("only admins")

    # An admin sees everyone's jobs, and narrows them to one user's.
    bob = pipeline.client("bob")
    bobs = _submit(bob, ["http://127.0.0.1:9/c.bin"], metadata={"tag": "red"})
    page.context.clear_cookies()
    _sign_in(page, pipeline, pipeline.token("root", admin=True))
    assert shown("") == {red, blue, bobs}
    assert shown("user=bob") == {bobs}
    assert shown("user=alice&text=red") == {red}


def test_a_finished_job_offers_its_files_and_an_archive(
    pipeline: Pipeline, file_server: FileServer, page: Page, tmp_path: Path
) -> None:
    pipeline.start_downloader()
    pipeline.start_exporter()
    alice = pipeline.client("alice")
    url, digest = file_server.add_file("scene.tif", size=256 * KIB)
    job_id = _submit(alice, [url])
    assert pipeline.wait_job(alice, job_id)["status"] == "completed"
    _sign_in(page, pipeline, pipeline.token("alice"))
    page.goto(f"{pipeline.url}/dashboard/jobs/{job_id}")
    expect(page.locator("#cancel-form")).to_be_hidden()

    with page.expect_download() as download:
        page.click("a[data-role=download]")
    saved = tmp_path / "scene.tif"
    download.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == digest

    page.click("text=Export zip")
    expect(page).to_have_url(re.compile(r"/dashboard/jobs/.+\?export=.+"))
    deadline = time.monotonic() + 20
    while not page.locator("#export a", has_text="download").count():
        assert time.monotonic() < deadline, page.locator("#export").inner_text()
        time.sleep(0.2)
        page.reload()
    with page.expect_download() as download:
        page.click("#export a")
    archive = tmp_path / "export.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as opened:
        assert "scene.tif" in {Path(name).name for name in opened.namelist()}
