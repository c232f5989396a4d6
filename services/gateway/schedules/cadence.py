"""When a schedule's runs fall: checking a cadence, its first run, and what a tick that finds a
schedule due fires (the missed-run policy) and when the schedule is due next."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import CroniterError, croniter  # type: ignore[import-untyped]

from services.gateway.schedules.errors import InvalidSchedule
from services.gateway.schedules.records import MissedPolicy

if TYPE_CHECKING:
    from services.gateway.schedules.records import Cadence

# A run fired up to this late is on time, not missed: the scheduler ticks every half second,
# and a second gateway takes over a few seconds after the first dies.
ON_TIME_S = 10.0
# At most a year between runs: a longer interval is more likely a unit mistake than a plan.
MAX_EVERY_S = 366 * 86_400
_CRON_FIELDS = 5


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What a tick does with a due schedule: `run_for` is the scheduled time of the one run
    to fire (None: every run due was missed and is skipped)."""

    run_for: datetime | None
    next_run_at: datetime


def check(cadence: Cadence) -> None:
    """Raise InvalidSchedule, naming the field, unless the cadence can run."""
    if (cadence.cron is None) == (cadence.every_s is None):
        raise InvalidSchedule("cron, every_s: give exactly one of them")
    if cadence.every_s is not None:
        if not math.isfinite(cadence.every_s) or cadence.every_s < 1:
            raise InvalidSchedule(f"every_s: {cadence.every_s} is under 1 second")
        if cadence.every_s > MAX_EVERY_S:
            raise InvalidSchedule(f"every_s: at most {MAX_EVERY_S} (366 days)")
        if cadence.timezone != "UTC":
            raise InvalidSchedule("timezone: only with cron (an interval has no time of day)")
        return
    zone = _zone(cadence.timezone)
    expression = cadence.cron or ""
    fields = len(expression.split())
    if not expression.startswith("@") and fields != _CRON_FIELDS:
        raise InvalidSchedule(
            f"cron: {expression!r} has {fields} fields; give 5"
            " (minute hour day-of-month month day-of-week)"
        )
    try:
        croniter(expression, datetime.now(zone)).get_next(datetime)
    except (CroniterError, ValueError, KeyError) as exc:
        raise InvalidSchedule(f"cron: {expression!r}: {exc}") from None


def first_run(cadence: Cadence, now: datetime) -> datetime:
    """The first run after `now` of a new (or resumed) schedule."""
    if cadence.every_s is not None:
        return now + timedelta(seconds=cadence.every_s)
    return _cron_after(cadence, now)


def plan(cadence: Cadence, missed: MissedPolicy, due: datetime, now: datetime) -> Plan:
    """The run a tick at `now` fires for a schedule due at `due` (<= now), and the next one.

    Runs fall on the cadence's own grid (an interval does not drift by the tick's lateness).
    The latest run due is fired when it is on time (late by at most ON_TIME_S); older ones
    were missed: `once` fires the latest for all of them, `skip` fires none.
    """
    if cadence.every_s is not None:
        every = timedelta(seconds=cadence.every_s)
        latest = due + every * ((now - due) // every)
        following = latest + every
    else:
        latest = max(due, _cron_before(cadence, now))
        following = _cron_after(cadence, now)
    on_time = now - latest <= timedelta(seconds=ON_TIME_S)
    run_for = latest if on_time or missed is MissedPolicy.ONCE else None
    return Plan(run_for=run_for, next_run_at=following)


def _cron_after(cadence: Cadence, moment: datetime) -> datetime:
    local = moment.astimezone(_zone(cadence.timezone))
    found: datetime = croniter(cadence.cron, local).get_next(datetime)
    return found.astimezone(UTC)


def _cron_before(cadence: Cadence, moment: datetime) -> datetime:
    local = moment.astimezone(_zone(cadence.timezone))
    found: datetime = croniter(cadence.cron, local).get_prev(datetime)
    return found.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidSchedule(
            f"timezone: {name!r} is not an IANA time zone name (e.g. Europe/Paris)"
        ) from None
