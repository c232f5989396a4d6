"""Schedules: cron or interval runs of a registered task, fired by one gateway at a time."""
