"""`enqueue_many` over POST /api/v1/tasks/batch: chunks of 1000, answers in order."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import downlink

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration


async def test_enqueue_many_queues_every_item_in_order(stack: Pipeline, token: str) -> None:
    async with downlink.Client(stack.url, token) as dl:
        handles = await dl.enqueue_many("add", [{"a": n, "b": 1} for n in range(1001)], priority=3)
        assert len({h.task_id for h in handles}) == 1001
        assert await handles[0].result(timeout=60) == 1
        assert await handles[1000].result(timeout=60) == 1001
        last = await handles[1000].status()
        assert (last.args, last.priority) == ({"a": 1000, "b": 1}, 3)

        # The second batch holds the bad item: the first is queued, the error says where.
        with pytest.raises(downlink.Invalid) as refused:
            await dl.enqueue_many("add", [*({"a": n} for n in range(1000)), {"a": "x"}])
        assert refused.value.message.startswith("items 1000-1000 (the 1000 before are queued): ")
        assert "tasks[0].args.a" in refused.value.message
        assert (await dl.tasks(task="add")).total == 2001


def test_sync_enqueue_many(stack: Pipeline, token: str) -> None:
    with downlink.SyncClient(stack.url, token) as dl:
        handles = dl.enqueue_many("sync_add", [{"a": 1, "b": 2}, {"a": 3, "b": 4}])
        assert [h.result(timeout=30) for h in handles] == [{"sum": 3}, {"sum": 7}]
