"""The lists' bulk buttons in a real browser against a real stack: "retry all failed matching"
on the tasks list, "cancel all matching" on the jobs list, each only over the filter and the
signed-in person's own rows, refused without the CSRF token; and the overview's time in queue."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import expect

from tests.tasks.conftest import STACK_ENV, enqueue, start_worker, wait_task

if TYPE_CHECKING:
    import httpx
    from playwright.sync_api import Page

    from tests.integration.conftest import Pipeline, PipelineFactory
    from tests.support.file_server import FileServer

pytestmark = pytest.mark.integration

KIB = 1024
MIB = 1024 * KIB


def _sign_in(page: Page, stack: Pipeline, token: str) -> None:
    page.goto(f"{stack.url}/dashboard/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{stack.url}/dashboard")


def _attempts_reach(client: httpx.Client, task_id: str, attempts: int) -> None:
    deadline = time.monotonic() + 15
    while client.get(f"/api/v1/tasks/{task_id}").json()["attempts"] < attempts:
        assert time.monotonic() < deadline, f"task {task_id} never ran try {attempts}"
        time.sleep(0.1)


def _submit(client: httpx.Client, url: str, scene: str) -> str:
    response = client.post(
        "/api/v1/downloads/download", json={"urls": [url], "metadata": {"scene": scene}}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def test_retry_all_failed_matching_retries_exactly_the_filtered_tasks_of_the_caller(
    pipeline_factory: PipelineFactory, page: Page
) -> None:
    stack = pipeline_factory(**STACK_ENV)
    start_worker(stack)
    alice, bob = stack.client("alice"), stack.client("bob")
    doomed = enqueue(alice, "doomed", args={"reason": "scene 7 is gone"})
    other = enqueue(alice, "not_json")
    bobs = enqueue(bob, "doomed", args={"reason": "his scene"})
    ended = {
        t: wait_task(client, t) for client, t in ((alice, doomed), (alice, other), (bob, bobs))
    }
    assert {status["status"] for status in ended.values()} <= {"failed", "dead"}

    _sign_in(page, stack, stack.token("alice"))
    page.goto(f"{stack.url}/dashboard/tasks?task=doomed")
    expect(page.locator("#task-total")).to_have_text("1 task(s) matching the filter")
    form = page.locator("#retry-matching")
    # The box must be ticked; the browser holds the form back until it is.
    form.get_by_role("button").click()
    expect(page).to_have_url(f"{stack.url}/dashboard/tasks?task=doomed")
    form.get_by_role("checkbox").check()
    form.get_by_role("button").click()
    expect(page.locator("#outcome")).to_have_text("1 task(s) queued again")
    expect(page).to_have_url(
        f"{stack.url}/dashboard/tasks?task=doomed&retried=1&skipped=0&remaining=0"
    )
    _attempts_reach(alice, doomed, 2)
    wait_task(alice, doomed)
    # Neither the task of the other name nor Bob's task of the same name ran again.
    assert alice.get(f"/api/v1/tasks/{other}").json()["attempts"] == 1
    assert bob.get(f"/api/v1/tasks/{bobs}").json()["attempts"] == 1
    assert bob.get(f"/api/v1/tasks/{bobs}").json()["status"] == ended[bobs]["status"]

    # The filter and the confirmation travel in the form: a forged user filter is a 400, a
    # missing token a 403, and neither changes anything.
    token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    url = f"{stack.url}/dashboard/tasks/retry-matching"
    forged = page.request.post(url, form={"csrf_token": token, "confirm": "yes", "user": "bob"})
    assert forged.status == 400
    assert "user: only admins filter by user" in forged.text()
    unconfirmed = page.request.post(url, form={"csrf_token": token, "task": "not_json"})
    assert unconfirmed.status == 400
    for path in ("tasks/retry-matching", "tasks/cancel-matching"):
        refused = page.request.post(
            f"{stack.url}/dashboard/{path}", form={"confirm": "yes"}, max_redirects=0
        )
        assert refused.status == 403
    assert alice.get(f"/api/v1/tasks/{other}").json()["attempts"] == 1
    assert bob.get(f"/api/v1/tasks/{bobs}").json()["attempts"] == 1

    # Cancel all matching: only the open tasks the filter picks.
    later = enqueue(alice, "add", args={"a": 1}, defer_s=3600)
    other_later = enqueue(alice, "count_up", args={"steps": 1}, defer_s=3600)
    bobs_later = enqueue(bob, "add", args={"a": 1}, defer_s=3600)
    page.goto(f"{stack.url}/dashboard/tasks?task=add")
    form = page.locator("#cancel-matching")
    form.get_by_role("checkbox").check()
    form.get_by_role("button").click()
    expect(page.locator("#outcome")).to_have_text("1 task(s) cancelled")
    assert alice.get(f"/api/v1/tasks/{later}").json()["status"] == "cancelled"
    assert alice.get(f"/api/v1/tasks/{other_later}").json()["status"] == "pending"
    assert bob.get(f"/api/v1/tasks/{bobs_later}").json()["status"] == "pending"

    # The first tries just run show as time in queue on the task lane, every download lane
    # listed (with nothing run there).
    page.goto(f"{stack.url}/dashboard")
    lanes = page.locator("#queue-waits tbody tr")
    downloads = lanes.and_(page.locator('[data-lane^="downlink:downloads:"]'))
    expect(downloads).to_have_count(3)
    expect(downloads.first.locator("[data-role=median]")).to_have_text("—")
    task_lane = page.locator('#queue-waits tr[data-lane^="downlink:tasks:"]')
    expect(task_lane).to_have_count(1)
    expect(task_lane.locator("td").nth(1)).to_have_text("2")  # her two first tries, not Bob's
    expect(task_lane.locator("[data-role=median]")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    expect(task_lane.locator("[data-role=p95]")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
    expect(task_lane.locator("svg rect")).to_have_count(2)


def test_cancel_all_matching_jobs_cancels_exactly_the_filtered_open_jobs_of_the_caller(
    pipeline: Pipeline, file_server: FileServer, page: Page
) -> None:
    pipeline.start_downloader()
    alice, bob = pipeline.client("alice"), pipeline.client("bob")
    file_server.add_file("slow.tif", size=8 * MIB)
    url = file_server.file_url("slow.tif", rate=256 * KIB)
    alpha = _submit(alice, url, "alpha")
    beta = _submit(alice, url, "beta")
    bobs_alpha = _submit(bob, url, "alpha")

    _sign_in(page, pipeline, pipeline.token("alice"))
    page.goto(f"{pipeline.url}/dashboard/jobs?text=alpha")
    expect(page.locator("#job-total")).to_have_text("1 job(s) matching the filter")
    refused = page.request.post(
        f"{pipeline.url}/dashboard/jobs/cancel-matching",
        form={"confirm": "yes", "text": "alpha"},
        max_redirects=0,
    )
    assert refused.status == 403
    assert alice.get(f"/api/v1/downloads/jobs/{alpha}").json()["status"] != "cancelled"

    form = page.locator("#cancel-matching")
    form.get_by_role("checkbox").check()
    form.get_by_role("button").click()
    expect(page.locator("#outcome")).to_have_text("1 job(s) cancelled")
    expect(page.locator(f'tr[data-job-id="{alpha}"]')).to_contain_text("cancelled")
    assert alice.get(f"/api/v1/downloads/jobs/{alpha}").json()["status"] == "cancelled"
    for client, job in ((alice, beta), (bob, bobs_alpha)):
        assert client.get(f"/api/v1/downloads/jobs/{job}").json()["status"] in {
            "pending",
            "in_progress",
        }
    # Nothing open matches any more; retrying failed files finds none to queue.
    page.goto(f"{pipeline.url}/dashboard/jobs?text=beta")
    form = page.locator("#retry-matching")
    form.get_by_role("checkbox").check()
    form.get_by_role("button").click()
    expect(page.locator("#outcome")).to_have_text("0 failed file(s) of 0 job(s) queued again")
    assert alice.get(f"/api/v1/downloads/jobs/{beta}").json()["status"] != "cancelled"
