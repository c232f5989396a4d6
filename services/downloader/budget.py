"""One connection budget per host for the whole fleet: leased slots (shared.leases) per host.

A host's slots are a sorted set of leases in Redis, so a SIGKILLed downloader's slots free
themselves once their lease runs out, and a slot given back stays warm for the process's next
file on that host for a moment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.leases import LeasedSlots

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from shared.leases import Lease

KEY_PREFIX = "downlink:host-slots:"
WAITER_PREFIX = "downlink:host-waiter:"


class HostBudget(LeasedSlots):
    """At most `per_host` connections to one host across every process sharing `redis`.

    `slot(host)` holds one for a block. Close it (or leave its `async with`) to stop the lease
    renewal.
    """

    def __init__(self, redis: Redis, per_host: int, *, lease_s: float = 5.0) -> None:
        super().__init__(
            redis,
            key_prefix=KEY_PREFIX,
            waiter_prefix=WAITER_PREFIX,
            limit=per_host,
            lease_s=lease_s,
            label="host slots",
        )

    async def acquire(self, name: str, limit: int | None = None) -> Lease:
        """Wait for a slot on host `name`; one round trip when one is free."""
        return await super().acquire(name.lower(), limit)  # host names are case-insensitive
