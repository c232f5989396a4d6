"""The tasks, workflows and schedules screens in a real browser against a real stack with a
task worker: lists, a task's live page, a workflow's graph as it runs, the buttons, and the
ownership and CSRF checks. The workflow's screenshot goes to docs/screenshots/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import expect

from services.gateway.dashboard.step_graph import (
    COLUMN_GAP,
    MARGIN,
    MAX_DRAWN_STEPS,
    NODE_WIDTH,
    depths,
    layout,
)
from services.gateway.workflows.records import StepRecord
from tests.tasks.conftest import STACK_ENV, enqueue, start_worker, wait_task

if TYPE_CHECKING:
    import httpx
    from playwright.sync_api import Page

    from tests.integration.conftest import Pipeline, PipelineFactory

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WORKFLOW_TASKS = (
    "--tasks",
    "tests.tasks.workflow_tasks",
    "--tasks",
    "tests.dashboard.artifact_tasks",
)


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    """A gateway and one worker of the sample, workflow and artifact tasks."""
    made = pipeline_factory(**STACK_ENV)
    start_worker(made, *WORKFLOW_TASKS)
    return made


def _sign_in(page: Page, stack: Pipeline, token: str) -> None:
    page.goto(f"{stack.url}/dashboard/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{stack.url}/dashboard")


def _open(page: Page, url: str) -> int:
    response = page.goto(url)
    assert response is not None
    return response.status


def _submit_workflow(client: httpx.Client, steps: list[dict[str, Any]]) -> str:
    response = client.post("/api/v1/workflows", json={"steps": steps})
    assert response.status_code == 202, response.text
    workflow_id: str = response.json()["workflow_id"]
    return workflow_id


def _make_schedule(client: httpx.Client) -> str:
    response = client.post(
        "/api/v1/schedules", json={"task": "add", "args": {"a": 1}, "every_s": 3600}
    )
    assert response.status_code == 201, response.text
    schedule_id: str = response.json()["schedule_id"]
    return schedule_id


def _step(key: str, *after: str, status: str = "waiting") -> StepRecord:
    return StepRecord(
        key=key,
        kind="task",
        task="wf.add",
        status=status,
        after=list(after),
        owner=None,
        task_id=None,
        job_id=None,
        attempts=None,
        progress=None,
        result=None,
        error=None,
        launched_at=None,
        started_at=None,
        finished_at=None,
    )


def test_steps_stand_in_columns_by_their_longest_path() -> None:
    # "late" is listed before the parent it waits for, as an expanded step's children are.
    steps = [
        _step("a"),
        _step("late", "tail"),
        _step("b", "a"),
        _step("c", "a", "ghost"),
        _step("tail", "b", "c"),
        _step("loop1", "loop2"),
        _step("loop2", "loop1"),
    ]
    assert depths(steps) == {
        "a": 0,
        "b": 1,
        "c": 1,
        "tail": 2,
        "late": 3,
        "loop1": 0,
        "loop2": 0,
    }
    chain = [_step("s0"), *(_step(f"s{i}", f"s{i - 1}") for i in range(1, 2000))]
    assert depths(chain)["s1999"] == 1999


def test_the_graph_draws_an_edge_per_dependency_and_gives_up_past_its_limit() -> None:
    graph = layout(
        [_step("a", status="completed"), _step("b", "a"), _step("c", "a"), _step("d", "b", "c")],
        link={"a": "/dashboard/tasks/1"},
    )
    assert graph is not None
    places = {node.key: (node.x, node.y) for node in graph.nodes}
    column = NODE_WIDTH + COLUMN_GAP
    assert [x for x, _ in places.values()] == [
        MARGIN,
        MARGIN + column,
        MARGIN + column,
        MARGIN + 2 * column,
    ]
    assert places["b"][1] < places["c"][1]
    assert [edge.status for edge in graph.edges] == ["completed", "completed", "waiting", "waiting"]
    assert [node.href for node in graph.nodes] == ["/dashboard/tasks/1", None, None, None]
    assert graph.width == 2 * MARGIN + 3 * column - COLUMN_GAP
    assert layout([_step(f"s{i}") for i in range(MAX_DRAWN_STEPS + 1)], link={}) is None
    assert layout([], link={}) is None


@pytest.mark.integration
def test_tasks_are_listed_filtered_and_followed_to_their_result_or_traceback(
    stack: Pipeline, page: Page
) -> None:
    alice = stack.client("alice")
    counting = enqueue(alice, "count_up", args={"steps": 40, "pause_s": 0.1})
    doomed = enqueue(alice, "doomed", args={"reason": "scene 7 is gone"})
    _sign_in(page, stack, stack.token("alice"))

    page.goto(f"{stack.url}/dashboard/tasks")
    expect(page.locator(f'tr[data-task-id="{counting}"]')).to_contain_text("count_up")
    expect(page.locator(f'tr[data-task-id="{doomed}"]')).to_contain_text("doomed")
    page.goto(f"{stack.url}/dashboard/tasks?status=failed")
    expect(page.locator(f'tr[data-task-id="{doomed}"]')).to_be_visible(timeout=15_000)
    expect(page.locator("tr[data-task-id]")).to_have_count(1)
    page.goto(f"{stack.url}/dashboard/tasks?task=count_up")
    expect(page.locator("tr[data-task-id]")).to_have_count(1)
    assert _open(page, f"{stack.url}/dashboard/tasks?status=done") == 400
    expect(page.locator(".error")).to_contain_text("status: 'done' is not one of")
    assert _open(page, f"{stack.url}/dashboard/tasks?user=bob") == 400

    # The progress bar moves while the task counts, without a reload; then its result shows.
    page.goto(f"{stack.url}/dashboard/tasks/{counting}")
    page.wait_for_function("() => document.getElementById('task-progress').value >= 5")
    seen = page.locator("#task-progress").evaluate("bar => bar.value")
    page.wait_for_function(
        f"() => document.getElementById('task-progress').value > {seen}", timeout=3_000
    )
    expect(page.locator("#task-result")).to_contain_text('"steps": 40', timeout=15_000)
    expect(page.locator("#task-status")).to_have_text("completed")
    expect(page.locator("#task-progress")).to_have_attribute("value", "40")
    expect(page.locator("#task-worker")).not_to_have_text("none yet")
    expect(page.locator("#tries tbody tr")).to_have_count(1)
    expect(page.locator("#cancel-form")).to_be_hidden()

    page.goto(f"{stack.url}/dashboard/tasks/{doomed}")
    expect(page.locator("#task-status")).to_have_text("failed")
    expect(page.locator("#task-error")).to_contain_text("Traceback")
    expect(page.locator("#task-error")).to_contain_text("Permanent: scene 7 is gone")
    expect(page.locator("#task-args")).to_contain_text("scene 7 is gone")


@pytest.mark.integration
def test_a_workflow_draws_its_steps_follows_them_to_completed_and_cancels(
    stack: Pipeline, page: Page
) -> None:
    alice = stack.client("alice")
    workflow_id = _submit_workflow(
        alice,
        [
            {"key": "scene", "task": "wf.nap", "args": {"value": 3, "seconds": 3}},
            {"key": "sum", "task": "wf.add", "args": {"a": 2, "b": 3}},
            {"key": "twice", "task": "wf.double", "after": ["sum"]},
            {"key": "bigger", "task": "wf.double", "after": ["scene"]},
            {"key": "total", "task": "wf.total", "after": ["twice", "bigger"]},
        ],
    )
    _sign_in(page, stack, stack.token("alice"))
    page.goto(f"{stack.url}/dashboard/workflows")
    page.locator(f'tr[data-workflow-id="{workflow_id}"] a').click()

    nodes = page.locator("#step-graph g.node")
    expect(nodes).to_have_count(5)
    keys = nodes.evaluate_all("nodes => nodes.map(n => n.dataset.step)")
    assert sorted(keys) == ["bigger", "scene", "sum", "total", "twice"]
    assert page.locator("#step-graph path.edge").count() == 4
    # Live, with no reload: a quick branch ends while the nap still runs.
    node = 'g.node[data-step="{}"]'
    expect(page.locator(node.format("twice"))).to_have_attribute("data-status", "completed")
    expect(page.locator(node.format("scene"))).to_have_attribute("data-status", "running")
    expect(page.locator(node.format("total"))).to_have_attribute("data-status", "waiting")
    page.screenshot(path=str(SCREENSHOTS / "workflow.png"), full_page=True)
    expect(page.locator("#workflow-status")).to_have_text("completed", timeout=20_000)
    statuses = nodes.evaluate_all("nodes => nodes.map(n => n.dataset.status)")
    assert statuses == ["completed"] * 5
    expect(page.locator("#workflow-result")).to_contain_text('"total": 16')
    steps = {s["key"]: s for s in alice.get(f"/api/v1/workflows/{workflow_id}").json()["steps"]}
    link = f"/dashboard/tasks/{steps['total']['task_id']}"
    expect(page.locator('tr[data-step="total"] a')).to_have_attribute("href", link)
    expect(page.locator("#cancel-form")).to_be_hidden()

    long = _submit_workflow(
        alice,
        [
            {"key": "long", "task": "wf.nap", "args": {"value": 1, "seconds": 30}},
            {"key": "next", "task": "wf.double", "after": ["long"]},
        ],
    )
    page.goto(f"{stack.url}/dashboard/workflows/{long}")
    expect(page.locator(node.format("long"))).to_have_attribute("data-status", "running")
    page.click("text=Cancel workflow")
    expect(page.locator("#workflow-status")).to_have_text("cancelled")
    assert alice.get(f"/api/v1/workflows/{long}").json()["status"] == "cancelled"
    expect(page.locator(node.format("next"))).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#cancel-form")).to_be_hidden()
    page.goto(f"{stack.url}/dashboard/workflows?status=cancelled")
    expect(page.locator("tr[data-workflow-id]")).to_have_count(1)

    # A file a step made is listed with a link to its bytes, through the session.
    made = _submit_workflow(
        alice, [{"key": "report", "task": "dash.report", "args": {"text": "NDVI 0.42"}}]
    )
    page.goto(f"{stack.url}/dashboard/workflows/{made}")
    expect(page.locator("#workflow-status")).to_have_text("completed", timeout=15_000)
    link = page.locator("#artifacts a", has_text="report.txt")
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "report.txt"
    assert Path(download.value.path()).read_text() == "NDVI 0.42"
    bobs_page = f"{stack.url}/dashboard/workflows/{made}/artifacts/report.txt"
    page.context.clear_cookies()
    _sign_in(page, stack, stack.token("bob"))
    assert page.request.get(bobs_page).status == 404


@pytest.mark.integration
def test_schedule_buttons_and_the_ownership_and_csrf_checks(stack: Pipeline, page: Page) -> None:
    alice = stack.client("alice")
    bob = stack.client("bob")
    schedule_id = _make_schedule(alice)
    _sign_in(page, stack, stack.token("alice"))
    page.goto(f"{stack.url}/dashboard/schedules")
    row = page.locator(f'tr[data-schedule-id="{schedule_id}"]')
    expect(row).to_contain_text("every 3600 s")
    expect(row.locator("[data-role=next]")).not_to_be_empty()

    row.get_by_role("button", name="Pause").click()
    expect(row.locator("[data-role=state]")).to_have_text("paused")
    assert alice.get(f"/api/v1/schedules/{schedule_id}").json()["paused"] is True
    row.get_by_role("button", name="Resume").click()
    expect(row.locator("[data-role=state]")).to_have_text("active")
    assert alice.get(f"/api/v1/schedules/{schedule_id}").json()["paused"] is False

    assert alice.get("/api/v1/tasks", params={"task": "add"}).json()["total"] == 0
    row.get_by_role("button", name="Run now").click()
    expect(row.locator("[data-role=last-task]")).to_be_visible()
    (ran,) = alice.get("/api/v1/tasks", params={"task": "add"}).json()["tasks"]
    assert wait_task(alice, ran["task_id"])["result"] == 1
    href = row.locator("[data-role=last-task]").get_attribute("href")
    assert href == f"/dashboard/tasks/{ran['task_id']}"

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert alice.get(f"/api/v1/schedules/{schedule_id}").status_code == 404

    # Bob's ids are not there for Alice, whatever she sends.
    bobs_task = enqueue(bob, "count_up", args={"steps": 1})
    bobs_workflow = _submit_workflow(bob, [{"key": "one", "task": "wf.add", "args": {"a": 1}}])
    bobs_schedule = _make_schedule(bob)
    assert _open(page, f"{stack.url}/dashboard/tasks/{bobs_task}") == 404
    assert _open(page, f"{stack.url}/dashboard/workflows/{bobs_workflow}") == 404
    assert page.request.get(f"{stack.url}/dashboard/tasks/{bobs_task}/events").status == 404
    page.goto(f"{stack.url}/dashboard/schedules")
    expect(page.locator("tr[data-schedule-id]")).to_have_count(0)
    token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    forged = page.request.post(
        f"{stack.url}/dashboard/schedules/{bobs_schedule}/pause", form={"csrf_token": token}
    )
    assert forged.status == 404
    assert bob.get(f"/api/v1/schedules/{bobs_schedule}").json()["paused"] is False

    # A form POST without the session's CSRF token is refused, and changes nothing.
    own_task = enqueue(alice, "add", args={"a": 1}, defer_s=3600)
    own_workflow = _submit_workflow(
        alice, [{"key": "later", "task": "wf.nap", "args": {"value": 1, "seconds": 30}}]
    )
    own_schedule = _make_schedule(alice)
    for url in (
        f"/dashboard/tasks/{own_task}/cancel",
        f"/dashboard/workflows/{own_workflow}/cancel",
        f"/dashboard/schedules/{own_schedule}/pause",
        f"/dashboard/schedules/{own_schedule}/delete",
    ):
        assert page.request.post(f"{stack.url}{url}", form={}, max_redirects=0).status == 403
        refused = page.request.post(f"{stack.url}{url}", form={"csrf_token": "forged"})
        assert refused.status == 403
    assert alice.get(f"/api/v1/tasks/{own_task}").json()["status"] == "pending"
    assert alice.get(f"/api/v1/workflows/{own_workflow}").json()["status"] == "running"
    assert alice.get(f"/api/v1/schedules/{own_schedule}").json()["paused"] is False
    # With its token, the task's page cancels it.
    page.goto(f"{stack.url}/dashboard/tasks/{own_task}")
    page.click("text=Cancel task")
    expect(page.locator("#task-status")).to_have_text("cancelled")
    assert alice.get(f"/api/v1/tasks/{own_task}").json()["status"] == "cancelled"

    # An admin sees everyone's.
    page.context.clear_cookies()
    _sign_in(page, stack, stack.token("root", admin=True))
    page.goto(f"{stack.url}/dashboard/tasks?user=bob")
    expect(page.locator(f'tr[data-task-id="{bobs_task}"]')).to_be_visible()
    # Bob's own count_up and his workflow's one step, none of Alice's.
    expect(page.locator("tr[data-task-id]")).to_have_count(bob.get("/api/v1/tasks").json()["total"])
    expect(page.locator(f'tr[data-task-id="{own_task}"]')).to_have_count(0)
    assert _open(page, f"{stack.url}/dashboard/workflows/{bobs_workflow}") == 200
    page.goto(f"{stack.url}/dashboard/schedules")
    expect(page.locator(f'tr[data-schedule-id="{bobs_schedule}"]')).to_contain_text("bob")
