"""What a consumer hands its handlers, and how it is configured: plain data, no Redis."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from faststream.redis.parser import BinaryMessageFormatV1

if TYPE_CHECKING:
    from shared.settings import Settings

ATTEMPT_HEADER = "downlink-attempt"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to a handler.

    Attributes:
        stream: the stream it was read from.
        entry_id: its Redis entry id.
        body: the message body (JSON).
        headers: the frame's headers (traceparent, correlation id, attempt).
        attempt: 1 on the first try; counts retries and crashed deliveries.
    """

    stream: str
    entry_id: str
    body: bytes
    headers: dict[str, Any]
    attempt: int


Handler = Callable[[Delivery], Awaitable[None]]
# Handles a whole read at once (the tracker: one transaction per batch). Raising hands every
# delivery of the batch to the single-entry handler, whose retries and dead letters isolate the
# entry that broke it.
BatchHandler = Callable[[Sequence[Delivery]], Awaitable[None]]
DeadHook = Callable[[Delivery, BaseException], Awaitable[None]]
# Called once a failed try is scheduled again: the delivery, its error, the delay in seconds.
RetryHook = Callable[[Delivery, BaseException, float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConsumerPolicy:
    """How a consumer paces, retries and gives up; plain data so user tasks can carry one."""

    concurrency: int = 1
    max_tries: int = 3
    retry_backoff_s: float = 5.0
    claim_idle_s: float = 30.0
    lease_renew_s: float = 5.0
    shutdown_grace_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings, *, concurrency: int) -> ConsumerPolicy:
        """The policy every service derives from DOWNLINK_* settings."""
        return cls(
            concurrency=concurrency,
            max_tries=settings.max_tries,
            retry_backoff_s=settings.retry_backoff_s,
            claim_idle_s=settings.claim_idle_s,
            lease_renew_s=settings.lease_renew_s,
            shutdown_grace_s=settings.shutdown_grace_s,
        )

    def backoff_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Delay before try `attempt + 1`: doubling from the base, with jitter."""
        if retry_after_s is not None:
            return retry_after_s
        base: float = self.retry_backoff_s * 2 ** (attempt - 1)
        return base * random.uniform(0.8, 1.2)


@dataclass(slots=True)
class ConsumerStats:
    """Counts a worker reports about itself."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0
    in_flight: int = 0


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An entry that ran out of tries or failed permanently, as stored on `downlink:dead`."""

    stream: str
    group: str
    entry_id: str
    error: str
    attempts: int
    consumer: str
    failed_at: float
    body: str
    headers: dict[str, str] = {}


def decode_delivery(stream: str, entry_id: str, frame: bytes, delivery_count: int) -> Delivery:
    """The delivery of one entry's frame; an unreadable frame gives its raw bytes as body."""
    try:
        body, headers = BinaryMessageFormatV1.parse(frame)
    except Exception:
        body, headers = frame, {}
    earlier = int_header(headers, ATTEMPT_HEADER)
    return Delivery(stream, entry_id, body, headers, attempt=earlier + delivery_count)


def int_header(headers: dict[str, Any], name: str) -> int:
    try:
        return int(headers.get(name, 0))
    except (TypeError, ValueError):
        return 0
