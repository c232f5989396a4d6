"""The tracker's spans of task events on real Redis and PostgreSQL: one per batch, not one per
event, linked to each event's publisher, so every task's trace still leads to its projection."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from services.gateway.tasks.enqueueing import enqueue
from services.gateway.tasks.records import NewTask
from services.gateway.tracker import Tracker
from shared.broker import create_broker
from shared.events import TaskSucceeded
from shared.ids import new_event_id
from shared.streams import EVENTS_STREAM
from tests.gateway.support import eventually, user_id

if TYPE_CHECKING:
    import asyncpg

    from shared.settings import Settings

TASKS = 20


async def test_a_batch_of_task_events_is_one_span_linked_to_each_tasks_trace(
    pool: asyncpg.Pool, redis_url: str, settings: Settings
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    owner = await user_id(pool, "alice")
    new = NewTask(user_id=owner, task="noop", queue="q", args={}, priority=5)
    async with pool.acquire() as connection:
        tasks = [
            (await enqueue(connection, new, trace_id=None, trace_headers={})).task_id
            for _ in range(TASKS)
        ]
    broker = create_broker(redis_url, tracer_provider=provider)
    await broker.connect()
    traces: dict[str, int] = {}
    try:
        for task_id in tasks:  # each task's end in a trace of its own, all before one read
            with provider.get_tracer("test").start_as_current_span("worker") as span:
                traces[task_id] = span.get_span_context().trace_id
                done = TaskSucceeded(event_id=new_event_id(), task_id=task_id, at=1.0, attempt=1)
                await broker.publish(done, stream=EVENTS_STREAM)
    finally:
        await broker.stop()
    spans.clear()

    redis = Redis.from_url(redis_url)
    tracker = Tracker(pool, redis, settings, tracer_provider=provider)
    running = asyncio.create_task(tracker.run())
    try:

        async def all_completed() -> bool:
            done = await pool.fetchval("SELECT count(*) FROM tasks WHERE status = 'completed'")
            return bool(done == TASKS)

        await eventually(all_completed, what="every task completed")
    finally:
        tracker.stop()
        await asyncio.wait_for(running, 10)
        await redis.aclose()

    tracked = [s for s in spans.get_finished_spans() if s.name == f"{EVENTS_STREAM} process"]
    assert len(tracked) == 1, [dict(s.attributes or {}) for s in tracked]
    (batch,) = tracked
    assert (batch.attributes or {})["messaging.batch.message_count"] == TASKS
    linked = {
        (link.attributes or {})["downlink.task_id"]: link.context.trace_id for link in batch.links
    }
    assert linked == traces
