"""The seed backends' examples (examples/*) run by real workers on a real stack."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.conftest import pipeline_factory
from tests.support.fake_apis import AnnotationApi, IqdbIndex
from tests.tasks.conftest import STACK_ENV

if TYPE_CHECKING:
    from collections.abc import Iterator

    import httpx

    from tests.integration.conftest import Pipeline, PipelineFactory

__all__ = ["pipeline_factory"]


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    return pipeline_factory(**STACK_ENV)


@pytest.fixture
def annotation_api() -> Iterator[AnnotationApi]:
    with AnnotationApi() as api:
        yield api


@pytest.fixture
def iqdb() -> Iterator[IqdbIndex]:
    with IqdbIndex() as index:
        yield index


def wait_progress(
    client: httpx.Client, task_id: str, done: float, timeout: float = 30
) -> dict[str, Any]:
    """Poll the running task until its progress reaches `done`; its status then."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get(f"/api/v1/tasks/{task_id}").json()
        if (status["progress"] or {}).get("done", 0) >= done:
            return status
        if status["status"] not in {"pending", "running"} or time.monotonic() > deadline:
            pytest.fail(f"task {task_id} never reported {done} done: {status}")
        time.sleep(0.05)
