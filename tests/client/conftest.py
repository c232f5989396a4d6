"""A stack for the client's tests: a real gateway and a task worker running the sample tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.tasks.conftest import STACK_ENV, pipeline_factory, start_worker

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline, PipelineFactory

__all__ = ["pipeline_factory"]


@pytest.fixture
def stack(pipeline_factory: PipelineFactory) -> Pipeline:
    """A gateway and one worker of tests.tasks.sample_tasks."""
    stack = pipeline_factory(**STACK_ENV)
    start_worker(stack, "--max-jobs", "4")
    return stack


@pytest.fixture
def token(stack: Pipeline) -> str:
    """A token of the user alice."""
    return stack.token("alice")
