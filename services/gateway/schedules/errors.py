"""Errors of the schedules area, each with its HTTP meaning (app.py maps GatewayError once).

GatewayError (services.gateway.errors)
├── ScheduleNotFound   404  no such schedule of the caller
└── InvalidSchedule    422  a cadence that cannot run (cron that does not parse, both or
                            neither of cron and every_s, every_s under 1, unknown timezone);
                            the message starts with the field
"""

from __future__ import annotations

from services.gateway.errors import GatewayError, NotFound


class ScheduleNotFound(NotFound):
    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule {schedule_id} not found")


class InvalidSchedule(GatewayError):
    status_code = 422
