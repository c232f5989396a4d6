"""Processor fixtures: storage and staging on tmp_path, a recording publisher, handler deps."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.processor.handlers import ProcessDeps, StepTimeouts
from shared.ids import JobId, UserId
from shared.storage.local import LocalStorage
from shared.storage.staging import Staging

# The gateway's fixtures (app, client, pool, tokens) for the saga tests of processing.
from tests.gateway.conftest import (  # noqa: F401
    app,
    auth,
    client,
    make_auth,
    pool,
    settings,
    spans,
    tracer_provider,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from shared.events import Event

P = ParamSpec("P")
R = TypeVar("R")

USER = UserId("user-1")
JOB = JobId("5b0c8c1e-0d0a-4c55-9a3c-000000000001")


@dataclass
class RecordingPublisher:
    """An EventPublisher that keeps what it was given."""

    events: list[Event] = field(default_factory=list)

    async def publish(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class ThreadRunner:
    """Runs tasks in a thread: the handler logic without process start-up costs."""

    async def run(
        self, timeout_s: float, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        async with asyncio.timeout(timeout_s):
            return await asyncio.to_thread(func, *args, **kwargs)


@dataclass
class Cancelled:
    jobs: set[str] = field(default_factory=set)

    async def is_cancelled(self, job_id: JobId) -> bool:
        return job_id in self.jobs


@dataclass
class Processor:
    """Everything a handler test drives and inspects."""

    deps: ProcessDeps
    publisher: RecordingPublisher
    storage: LocalStorage
    cancelled: Cancelled
    spans: InMemorySpanExporter

    def put(self, source: Path, key: str) -> str:
        """Place `source` in storage under `key`, as the downloader would have."""
        target = self.storage.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return key


@pytest.fixture
def processor(tmp_path: Path) -> Iterator[Processor]:
    storage = LocalStorage(tmp_path / "storage")
    staging = Staging.create(storage, tmp_path)
    publisher = RecordingPublisher()
    cancelled = Cancelled()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    deps = ProcessDeps(
        staging=staging,
        publisher=publisher,
        runner=ThreadRunner(),
        cancellations=cancelled,
        timeouts=StepTimeouts(metadata_s=30, thumbnail_s=30, cog_s=60, composite_s=60),
        tracer=provider.get_tracer("test"),
    )
    yield Processor(deps, publisher, storage, cancelled, exporter)
    staging.close()
    provider.shutdown()
