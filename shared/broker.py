"""The one FastStream broker factory, and the event publisher built on it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fast_depends.msgspec import MsgSpecSerializer
from faststream.redis import RedisBroker
from faststream.redis.opentelemetry import RedisTelemetryMiddleware

from shared.streams import EVENTS_STREAM

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from shared.events import Command, Event, ExportEvent


def create_broker(redis_url: str, tracer_provider: TracerProvider | None = None) -> RedisBroker:
    """A broker that speaks msgspec and carries the trace context in every message."""
    return RedisBroker(
        redis_url,
        serializer=MsgSpecSerializer(),
        middlewares=[RedisTelemetryMiddleware(tracer_provider=tracer_provider)],
    )


class EventPublisher(Protocol):
    """Where handlers send their facts."""

    async def publish(self, event: Event | ExportEvent) -> None: ...


class BrokerPublisher:
    """Publishes events to `downlink:events` and commands to their lanes through the broker."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker

    async def publish(self, event: Event | ExportEvent) -> None:
        await self._broker.publish(event, stream=EVENTS_STREAM)

    async def send(self, command: Command, stream: str) -> None:
        await self._broker.publish(command, stream=stream)
