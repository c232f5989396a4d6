"""Workflows through downlink.SyncClient, against real gateway and worker processes: a block
built in Python runs with each result fed on, a named workflow expands, a cancel ends one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import downlink
from tests.tasks import workflow_tasks as wf
from tests.tasks.conftest import STACK_ENV, start_worker

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline, PipelineFactory

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    """A gateway and one worker of the sample tasks and the workflow tasks."""
    stack = pipeline_factory(**STACK_ENV)
    start_worker(stack, "--tasks", "tests.tasks.workflow_tasks")
    return stack


def test_a_block_built_in_python_runs_and_feeds_each_result_on(stack: Pipeline, token: str) -> None:
    flow = downlink.chain(
        wf.add.s(a=2, b=3), downlink.group(wf.double.s(), wf.double.s()), wf.total.s()
    )
    with downlink.SyncClient(stack.url, token=token) as client:
        submitted = client.submit_workflow(flow)
        done = client.wait_workflow(submitted.workflow_id, timeout=60)
        assert (done.status, done.result) == ("completed", {"total": 20})
        assert done.step("double-2").result == 10
        named = client.submit_workflow("wf.numbers", {"a": 1, "b": 1})
        assert client.wait_workflow(named.workflow_id, timeout=60).result == {"numbers": 6}
        listed = client.workflows()
        assert listed.total == 2
        assert {w.workflow_id for w in listed.workflows} == {
            submitted.workflow_id,
            named.workflow_id,
        }


def test_a_workflow_cancelled_through_the_client_ends_cancelled(
    stack: Pipeline, token: str
) -> None:
    flow = downlink.chain(wf.nap.s(value=1, seconds=30), wf.double.s())
    with downlink.SyncClient(stack.url, token=token) as client:
        submitted = client.submit_workflow(flow)
        cancelled = client.cancel_workflow(submitted.workflow_id)
        assert cancelled.status == "cancelled"
        done = client.wait_workflow(submitted.workflow_id, timeout=10)
        assert [s.status for s in done.steps] == ["cancelled", "cancelled"]
        with pytest.raises(downlink.Conflict):
            client.cancel_workflow(submitted.workflow_id)
        with pytest.raises(downlink.NotFound):
            client.get_workflow("00000000-0000-0000-0000-000000000000")
