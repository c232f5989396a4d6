"""Tasks through downlink.Client and downlink.SyncClient, against a real gateway and worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import downlink
from downlink.client.models import Task

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration


async def test_async_client_enqueues_and_gets_the_result(stack: Pipeline, token: str) -> None:
    async with downlink.Client(stack.url, token) as dl:
        added = await dl.enqueue("add", a=2, b=3)
        counted = await dl.enqueue("count_up", steps=3, _priority=9)
        assert added.queue_position is not None
        assert await added.result(timeout=30) == 5
        assert await counted.result(timeout=30) == {"steps": 3}
        status = await counted.status()
        assert isinstance(status, Task)
        assert (status.status, status.priority, status.attempts) == ("completed", 9, 1)
        assert status.progress is not None
        assert (status.progress.done, status.progress.total) == (3, 3)
        listed = await dl.tasks(task="add", status="completed")
        assert [t.task_id for t in listed.tasks] == [added.task_id]
        assert {"add", "count_up", "doomed"} <= {t.name for t in await dl.task_types()}


def test_sync_client_enqueues_and_gets_the_result(stack: Pipeline, token: str) -> None:
    with downlink.SyncClient(stack.url, token) as dl:
        summed = dl.enqueue("sync_add", a=1, b=2, _idempotency_key="order-7")
        again = dl.enqueue("sync_add", a=1, b=2, _idempotency_key="order-7")
        assert again.task_id == summed.task_id
        assert summed.result(timeout=30) == {"sum": 3}
        assert dl.task(summed.task_id).status().result == {"sum": 3}
        assert dl.tasks().total == 1


async def test_bad_arguments_raise_invalid_naming_the_argument(stack: Pipeline, token: str) -> None:
    async with downlink.Client(stack.url, token) as dl:
        with pytest.raises(downlink.Invalid) as wrong_type:
            await dl.enqueue("add", a="two")
        with pytest.raises(downlink.Invalid) as unknown:
            await dl.enqueue("add", a=1, c=3)
        with pytest.raises(downlink.NotFound) as no_such_task:
            await dl.enqueue("no_such_task")
        assert (await dl.tasks()).total == 0
    assert (wrong_type.value.status, wrong_type.value.field) == (422, "args.a")
    assert unknown.value.field == "args.c"
    assert "unexpected argument" in unknown.value.message
    assert "no_such_task" in no_such_task.value.message


def test_a_dead_task_raises_with_the_workers_error_and_traceback(
    stack: Pipeline, token: str
) -> None:
    with downlink.SyncClient(stack.url, token) as dl:
        doomed = dl.enqueue("doomed", reason="image 7 is gone")
        with pytest.raises(downlink.TaskFailedError) as failed:
            doomed.result(timeout=30)
    assert failed.value.task_id == doomed.task_id
    assert failed.value.error == "Permanent: image 7 is gone"
    assert failed.value.traceback.startswith("Traceback")
    assert "image 7 is gone" in str(failed.value)


async def test_cancelled_and_unfinished_tasks(stack: Pipeline, token: str) -> None:
    async with downlink.Client(stack.url, token) as dl:
        later = await dl.enqueue("add", a=1, _defer_s=3600)
        with pytest.raises(TimeoutError, match="still pending"):
            await later.result(timeout=0.3)
        assert (await later.cancel()).status == "cancelled"
        with pytest.raises(downlink.TaskCancelledError):
            await later.result()
        with pytest.raises(downlink.Conflict, match="already ended"):
            await later.cancel()
