"""The admin screens in a real browser against a real stack: dead letters retried one by one
and by filter, discarded; a job's failed files retried; queues purged; workers greying out and
dropping off; 403 for non-admins and for a POST without the CSRF token."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from playwright.sync_api import expect

from shared.streams import task_types_key, worker_key

if TYPE_CHECKING:
    import httpx
    from playwright.sync_api import Page

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
FAST = {"DOWNLINK_RETRY_BACKOFF": "0.2", "DOWNLINK_RECONCILE_INTERVAL": "1"}
# Far more than a download's tries: the file answers with an error until the test heals it.
UNTIL_HEALED = 1_000_000


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    stack = pipeline_factory(**FAST)
    stack.start_downloader()
    return stack


def _sign_in(page: Page, stack: Pipeline, token: str) -> None:
    page.goto(f"{stack.url}/dashboard/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{stack.url}/dashboard")


def _dead_job(
    stack: Pipeline, client: httpx.Client, file_server: FileServer, name: str, code: int = 500
) -> str:
    """A job whose one file answers `code` until healed, once it failed."""
    file_server.add_file(name, size=2048)
    url = file_server.flaky_url(name, fail=UNTIL_HEALED, code=code)
    response = client.post("/api/v1/downloads/download", json={"urls": [url]})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    assert stack.wait_job(client, job_id, timeout=60)["status"] == "failed"
    return job_id


def _letters(admin: httpx.Client, job_id: str, *, at_least: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        found = admin.get("/api/v1/dead-letters", params={"job_id": job_id}).json()
        if len(found["dead_letters"]) >= at_least or time.monotonic() > deadline:
            return list(found["dead_letters"])
        time.sleep(0.1)


def _heal(file_server: FileServer, *names: str) -> None:
    for name in names:
        file_server.set_flaky(name, fail=0)


def test_a_dead_letter_is_retried_from_its_row_and_completes_once_the_server_heals(
    stack: Pipeline, file_server: FileServer, page: Page
) -> None:
    alice = stack.client("alice")
    admin = stack.client("root", admin=True)
    letter_job = _dead_job(stack, alice, file_server, "scene.tif")
    own_job = _dead_job(stack, alice, file_server, "mine.tif")
    (letter,) = _letters(admin, letter_job)
    _sign_in(page, stack, stack.token("ops", admin=True))

    page.click("nav >> text=Dead letters")
    row = page.locator(f'tr[data-letter-id="{letter["id"]}"]')
    expect(row).to_contain_text("HTTP 500")
    expect(row.locator(f'a[href="/dashboard/jobs/{letter_job}"]')).to_be_visible()
    expect(page.locator("#letter-total")).to_have_text("2 dead letter(s)")
    page.screenshot(path=str(SCREENSHOTS / "dead-letters.png"), full_page=True)

    _heal(file_server, "scene.tif", "mine.tif")
    row.locator("[data-role=retry]").click()
    expect(page.locator("#outcome")).to_contain_text("1 letter(s) re-driven")
    expect(row).to_have_count(0)
    assert stack.wait_job(alice, letter_job, timeout=30)["status"] == "completed"
    assert alice.get(f"/api/v1/downloads/jobs/{own_job}").json()["status"] == "failed"

    # The owner retries the other job's failed file from its page; its letter goes too.
    page.context.clear_cookies()
    _sign_in(page, stack, stack.token("alice"))
    page.goto(f"{stack.url}/dashboard/jobs/{own_job}")
    page.click("text=Retry failed files")
    assert stack.wait_job(alice, own_job, timeout=30)["status"] == "completed"
    assert admin.get("/api/v1/dead-letters").json()["total"] == 0


def test_retry_all_matching_re_drives_only_the_filtered_letters_and_discard_removes_one(
    stack: Pipeline, file_server: FileServer, page: Page
) -> None:
    alice = stack.client("alice")
    admin = stack.client("root", admin=True)
    erroring = _dead_job(stack, alice, file_server, "erroring.tif", code=500)
    missing = _dead_job(stack, alice, file_server, "missing.tif", code=404)
    (kept,) = _letters(admin, missing)
    _heal(file_server, "erroring.tif", "missing.tif")
    _sign_in(page, stack, stack.token("ops", admin=True))
    page.goto(f"{stack.url}/dashboard/dead-letters")
    expect(page.locator("tr[data-letter-id]")).to_have_count(2)

    page.fill("input[name=error]", "HTTP 500")
    page.click("text=Filter")
    expect(page.locator("tr[data-letter-id]")).to_have_count(1)
    page.click("#retry-matching button")
    expect(page.locator("#outcome")).to_contain_text("1 letter(s) re-driven")
    # Back on the same filter, which now matches nothing.
    expect(page.locator("input[name=error]")).to_have_value("HTTP 500")
    expect(page.locator("tr[data-letter-id]")).to_have_count(0)
    assert stack.wait_job(alice, erroring, timeout=30)["status"] == "completed"
    time.sleep(0.5)  # a wrongly re-driven letter would be downloading by now
    assert alice.get(f"/api/v1/downloads/jobs/{missing}").json()["status"] == "failed"
    assert [letter["id"] for letter in _letters(admin, missing)] == [kept["id"]]

    page.goto(f"{stack.url}/dashboard/dead-letters")
    page.locator(f'tr[data-letter-id="{kept["id"]}"] [data-role=discard]').click()
    expect(page.locator("#outcome")).to_contain_text("1 letter(s) discarded")
    expect(page.locator("tr[data-letter-id]")).to_have_count(0)
    assert admin.get("/api/v1/dead-letters").json()["total"] == 0
    assert alice.get(f"/api/v1/downloads/jobs/{missing}").json()["status"] == "failed"
    # A bad filter is a 400 naming its field.
    response = page.goto(f"{stack.url}/dashboard/dead-letters?kind=parcel")
    assert response is not None
    assert response.status == 400
    expect(page.locator(".error")).to_contain_text("kind")


def test_a_task_queue_is_purged_after_confirming(pipeline: Pipeline, page: Page) -> None:
    store = redis.Redis.from_url(pipeline.env["DOWNLINK_REDIS_URL"])
    # A task worker's registration (services.tasks.registry), without the worker: its task
    # stays pending, as in a queue nobody drains.
    definition = {"name": "resize", "queue": "images", "policy": {}, "args_schema": {}}
    store.hset(task_types_key("test-worker"), "resize", json.dumps(definition))
    alice = pipeline.client("alice")
    enqueued = alice.post("/api/v1/tasks", json={"task": "resize", "args": {}})
    assert enqueued.status_code == 202, enqueued.text
    task_id = enqueued.json()["task_id"]
    _sign_in(page, pipeline, pipeline.token("ops", admin=True))

    page.click("nav >> text=Queues")
    expect(page.locator('tr[data-stream="downlink:downloads:normal"]').first).to_be_visible()
    expect(page.locator('tr[data-stream="downlink:tasks:images:normal"]')).to_be_visible()
    queue = page.locator('tr[data-queue="images"]')
    queue.locator("button").click()  # the browser holds the form: the box is not ticked
    assert alice.get(f"/api/v1/tasks/{task_id}").json()["status"] == "pending"
    queue.locator("input[name=confirm]").check()
    queue.locator("button").click()
    expect(page.locator("#outcome")).to_have_text(
        "Queue images purged: 1 pending task(s) cancelled."
    )
    assert alice.get(f"/api/v1/tasks/{task_id}").json()["status"] == "cancelled"
    store.close()


def test_a_silent_worker_greys_out_and_an_expired_one_drops_off(
    pipeline: Pipeline, page: Page
) -> None:
    store = redis.Redis.from_url(pipeline.env["DOWNLINK_REDIS_URL"])
    now = time.time()
    fields = {"service": "downloader", "host": "far", "pid": "7", "started_at": str(now - 60)}
    for consumer, heartbeat in (("far-7", now - 25), ("far-8", now)):
        store.hset(
            worker_key(consumer),
            mapping={**fields, "consumer": consumer, "last_heartbeat": str(heartbeat)},
        )
    _sign_in(page, pipeline, pipeline.token("ops", admin=True))
    page.click("nav >> text=Workers")

    silent, live = (
        page.locator('tr[data-consumer="far-7"]'),
        page.locator('tr[data-consumer="far-8"]'),
    )
    expect(silent).to_have_class("stale")
    expect(live).not_to_have_class("stale")
    expect(page.locator("table.workers")).to_contain_text("gateway")
    # Its entry expires as a killed worker's does; the open page drops it without a reload.
    store.pexpire(worker_key("far-7"), 100)
    expect(silent).to_have_count(0, timeout=5_000)
    expect(live).to_be_visible()
    store.delete(worker_key("far-8"))
    store.close()


def test_non_admins_get_403_and_a_post_without_the_csrf_token_is_refused(
    pipeline: Pipeline, page: Page
) -> None:
    screens = ("queues", "workers", "dead-letters")
    posts = ("dead-letters/retry", "dead-letters/discard", "queues/images/purge")
    _sign_in(page, pipeline, pipeline.token("alice"))
    expect(page.locator("nav >> text=Dead letters")).to_have_count(0)
    token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    for screen in screens:
        assert page.request.get(f"{pipeline.url}/dashboard/{screen}").status == 403, screen
    for action in posts:
        sent = page.request.post(
            f"{pipeline.url}/dashboard/{action}",
            form={"csrf_token": token, "confirm": "yes"},
            max_redirects=0,
        )
        assert sent.status == 403, action

    page.context.clear_cookies()
    _sign_in(page, pipeline, pipeline.token("ops", admin=True))
    for action in posts:
        sent = page.request.post(
            f"{pipeline.url}/dashboard/{action}", form={"confirm": "yes"}, max_redirects=0
        )
        assert sent.status == 403, action
    token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    unconfirmed = page.request.post(
        f"{pipeline.url}/dashboard/queues/images/purge", form={"csrf_token": token}
    )
    assert unconfirmed.status == 400
    assert "confirm" in unconfirmed.text()
