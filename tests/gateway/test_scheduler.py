"""The scheduler on real PostgreSQL: one leader at a time, takeover when it dies, each run
fired once even by racing firers, and the missed-run policies."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from opentelemetry import trace

from services.gateway.schedules.cadence import ON_TIME_S, first_run, plan
from services.gateway.schedules.firing import fire_due
from services.gateway.schedules.queries import insert_schedule
from services.gateway.schedules.records import Cadence, MissedPolicy, NewSchedule
from services.gateway.schedules.scheduler import SCHEDULER_LOCK, Scheduler
from shared.postgres import open_pool
from tests.gateway.support import eventually, user_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import asyncpg

    from shared.ids import UserId

TICK_S = 0.1
_tracer = trace.get_tracer("tests")


@pytest.fixture
async def owner(pool: asyncpg.Pool) -> UserId:
    return await user_id(pool, "alice")


@pytest.fixture
async def schedulers(
    pool: asyncpg.Pool, database_url: str
) -> AsyncIterator[Callable[[], tuple[Scheduler, asyncio.Task[None]]]]:
    """`start()` runs one more scheduler loop (a gateway's), stopped at the end."""
    running: list[tuple[Scheduler, asyncio.Task[None]]] = []

    def start() -> tuple[Scheduler, asyncio.Task[None]]:
        scheduler = Scheduler(pool, database_url, tick_s=TICK_S)
        running.append((scheduler, asyncio.create_task(scheduler.run())))
        return running[-1]

    yield start
    for scheduler, task in running:
        scheduler.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _schedule(
    pool: asyncpg.Pool,
    owner: UserId,
    *,
    every_s: float | None = None,
    cron: str | None = None,
    missed: MissedPolicy = MissedPolicy.SKIP,
    next_run_at: datetime | None = None,
) -> str:
    cadence = Cadence(cron=cron, every_s=every_s)
    async with pool.acquire() as connection:
        made = await insert_schedule(
            connection,
            NewSchedule(
                user_id=owner,
                name=None,
                cadence=cadence,
                task="add",
                args={"a": 1},
                queue="default",
                priority=5,
                unique=False,
                missed=missed,
                paused=False,
                next_run_at=next_run_at or first_run(cadence, datetime.now(UTC)),
            ),
        )
    return made.schedule_id


async def _run_keys(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT idempotency_key FROM tasks ORDER BY idempotency_key")
    return [row["idempotency_key"] for row in rows]


async def _one_run_per_second(pool: asyncpg.Pool) -> list[datetime]:
    """The runs' times (from their keys, `schedule:{id}:{time}`), asserting one task per
    second of the schedule's grid: none twice, none left out."""
    times = [datetime.fromisoformat(key.split(":", 2)[2]) for key in await _run_keys(pool)]
    assert all(
        later - earlier == timedelta(seconds=1) for earlier, later in itertools.pairwise(times)
    )
    return times


async def _lock_holders(pool: asyncpg.Pool) -> list[int]:
    """The backends holding the scheduler's advisory lock (a bigint: two 32-bit halves) in
    this test's database (other tests' gateways hold theirs in their own)."""
    rows = await pool.fetch(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid = $1 AND objid = $2 AND objsubid = 1",
        SCHEDULER_LOCK >> 32,
        SCHEDULER_LOCK & 0xFFFFFFFF,
    )
    return [row["pid"] for row in rows]


async def test_two_schedulers_fire_each_run_exactly_once(
    pool: asyncpg.Pool,
    owner: UserId,
    schedulers: Callable[[], tuple[Scheduler, asyncio.Task[None]]],
) -> None:
    await _schedule(pool, owner, every_s=1)
    first, _ = schedulers()
    second, _ = schedulers()
    await asyncio.sleep(3.6)
    assert sorted([first.leading, second.leading]) == [False, True]
    assert len(await _one_run_per_second(pool)) >= 2


async def test_racing_firers_make_one_task_per_run(
    pool: asyncpg.Pool, database_url: str, owner: UserId
) -> None:
    due = datetime.now(UTC) - timedelta(seconds=1)
    for _ in range(20):
        await _schedule(pool, owner, every_s=3600, next_run_at=due)
    async with open_pool(database_url) as other:
        fired = await asyncio.gather(
            fire_due(pool, _tracer), fire_due(other, _tracer), fire_due(pool, _tracer)
        )
    assert sum(fired) == 20
    keys = await _run_keys(pool)
    assert len(keys) == len(set(keys)) == 20


async def test_a_second_scheduler_takes_over_when_the_leader_is_cancelled(
    pool: asyncpg.Pool,
    owner: UserId,
    schedulers: Callable[[], tuple[Scheduler, asyncio.Task[None]]],
) -> None:
    await _schedule(pool, owner, every_s=1)
    leader, leader_loop = schedulers()
    await eventually(lambda: _true(leader.leading), what="a leader")
    standby, _ = schedulers()
    await asyncio.sleep(3 * TICK_S)
    assert not standby.leading
    leader_loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leader_loop
    await eventually(lambda: _true(standby.leading), timeout_s=3, what="the takeover")
    fired_before = len(await _run_keys(pool))

    async def fired_again() -> bool:
        return len(await _run_keys(pool)) > fired_before

    await eventually(fired_again, timeout_s=3, what="a run fired by the new leader")
    await _one_run_per_second(pool)


async def test_the_lead_moves_when_the_leaders_session_dies(
    pool: asyncpg.Pool,
    owner: UserId,
    schedulers: Callable[[], tuple[Scheduler, asyncio.Task[None]]],
) -> None:
    await _schedule(pool, owner, every_s=1)
    first, _ = schedulers()
    await eventually(lambda: _true(first.leading), what="a leader")
    second, _ = schedulers()
    [holder] = await _lock_holders(pool)
    # What a crashed gateway's session does: it ends, and its lock with it.
    await pool.execute("SELECT pg_terminate_backend($1)", holder)

    async def moved() -> bool:
        holders = await _lock_holders(pool)
        return len(holders) == 1 and holders[0] != holder

    await eventually(moved, timeout_s=3, what="a new session holding the lead")
    await asyncio.sleep(2.2)
    assert sorted([first.leading, second.leading]) == [False, True]
    assert len(await _one_run_per_second(pool)) >= 2


async def test_missed_runs_are_skipped_by_default(
    pool: asyncpg.Pool,
    owner: UserId,
    schedulers: Callable[[], tuple[Scheduler, asyncio.Task[None]]],
) -> None:
    # Half way between two runs of the grid: the latest one due is half an hour late.
    long_ago = datetime.now(UTC) - timedelta(hours=2, minutes=30)
    made = await _schedule(pool, owner, every_s=3600, next_run_at=long_ago)
    schedulers()
    await eventually(lambda: _moved_on(pool, made), what="the schedule moved past now")
    assert await _run_keys(pool) == []
    row = await pool.fetchrow("SELECT next_run_at, last_run_at FROM schedules")
    # On the schedule's own grid: whole hours after the missed run.
    assert (row["next_run_at"] - long_ago) % timedelta(hours=1) == timedelta(0)
    assert row["last_run_at"] is None


async def test_missed_runs_collapse_into_one_with_once(
    pool: asyncpg.Pool,
    owner: UserId,
    schedulers: Callable[[], tuple[Scheduler, asyncio.Task[None]]],
) -> None:
    made = await _schedule(
        pool,
        owner,
        cron="*/5 * * * *",
        missed=MissedPolicy.ONCE,
        next_run_at=datetime.now(UTC) - timedelta(days=1),
    )
    schedulers()
    await eventually(lambda: _moved_on(pool, made), what="the schedule moved past now")
    await asyncio.sleep(5 * TICK_S)
    assert len(await _run_keys(pool)) == 1
    following = await pool.fetchval("SELECT next_run_at FROM schedules")
    assert following.minute % 5 == 0
    assert timedelta(0) < following - datetime.now(UTC) <= timedelta(minutes=5)


async def test_a_run_a_few_seconds_late_is_fired_not_skipped(
    pool: asyncpg.Pool,
    owner: UserId,
    schedulers: Callable[[], tuple[Scheduler, asyncio.Task[None]]],
) -> None:
    made = await _schedule(
        pool, owner, every_s=3600, next_run_at=datetime.now(UTC) - timedelta(seconds=3)
    )
    schedulers()
    await eventually(lambda: _moved_on(pool, made), what="the schedule moved past now")
    assert len(await _run_keys(pool)) == 1


def test_the_plan_of_a_due_schedule_keeps_to_its_grid() -> None:
    every = Cadence(every_s=60)
    due = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    on_time = plan(every, MissedPolicy.SKIP, due, due + timedelta(seconds=2))
    assert (on_time.run_for, on_time.next_run_at) == (due, due + timedelta(minutes=1))
    late = due + timedelta(minutes=10, seconds=ON_TIME_S + 1)
    skipped = plan(every, MissedPolicy.SKIP, due, late)
    assert (skipped.run_for, skipped.next_run_at) == (None, due + timedelta(minutes=11))
    once = plan(every, MissedPolicy.ONCE, due, late)
    assert once.run_for == due + timedelta(minutes=10)
    # 09:00 in Paris is 08:00 UTC in winter.
    paris = Cadence(cron="0 9 * * *", timezone="Europe/Paris")
    morning = plan(paris, MissedPolicy.SKIP, due, due + timedelta(seconds=1))
    assert morning.next_run_at == datetime(2026, 1, 2, 8, 0, tzinfo=UTC)


async def _true(value: bool) -> bool:
    return value


async def _moved_on(pool: asyncpg.Pool, schedule_id: str) -> bool:
    moved: bool = await pool.fetchval(
        "SELECT next_run_at > now() FROM schedules WHERE id = $1", schedule_id
    )
    return moved
