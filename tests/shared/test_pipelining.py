"""RoundTrips: concurrent callers share round trips and each gets its own result or error."""

from __future__ import annotations

import asyncio

import pytest

from shared.pipelining import RoundTrips


async def test_callers_arriving_during_a_round_trip_share_the_next_and_get_their_results() -> None:
    batches: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)  # a round trip
        return [item * 10 for item in items]

    trips: RoundTrips[int, int] = RoundTrips(send)

    first = asyncio.create_task(trips.submit(0))
    await asyncio.sleep(0.001)  # its round trip is out
    results = await asyncio.gather(first, *(trips.submit(n) for n in range(1, 20)))

    assert results == [n * 10 for n in range(20)]
    assert batches == [[0], list(range(1, 20))]  # sent at once; the rest queued behind it


async def test_a_failed_round_trip_fails_every_caller_in_it_and_the_next_one_goes_on() -> None:
    calls = 0

    async def send(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        return items

    trips: RoundTrips[str, str] = RoundTrips(send)

    with pytest.raises(ConnectionError):
        await trips.submit("lost")
    assert await trips.submit("next") == "next"
