"""Each job's event log (`job_events`), appended a list of events at a time.

The caller holds the rows of the events' jobs locked, so one job's events are appended one
transaction at a time and the ids of its log are handed out in commit order: a client reading
"id > last" can never skip one committed late.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from opentelemetry import trace

from shared.events import ENCODER, FileProgress

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from asyncpg import Connection

    from shared.events import Event

_COLUMNS = (
    "unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::float8[], $6::text[],"
    " $7::text[], $8::text[])"
    " WITH ORDINALITY AS e(job_id, event_id, type, file_id, at, payload, trace_id, span_id, ord)"
)
# In the order given, so the log's ids follow the events'.
_APPEND = (
    "INSERT INTO job_events (job_id, event_id, type, file_id, at, payload, trace_id, span_id)"
    " SELECT e.job_id, e.event_id, e.type, e.file_id, e.at, e.payload::jsonb, e.trace_id,"
    f" e.span_id FROM {_COLUMNS}"
    " WHERE EXISTS (SELECT 1 FROM jobs WHERE id = e.job_id) ORDER BY e.ord"
    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
# One row per file, moved to a new id by each newer progress, and only while the file is still
# being fetched: progress overtaken by the file's end would read as a rewind.
_APPEND_PROGRESS = (
    "INSERT INTO job_events (job_id, event_id, type, file_id, at, payload, trace_id, span_id)"
    " SELECT e.job_id, e.event_id, e.type, e.file_id, e.at, e.payload::jsonb, e.trace_id,"
    f" e.span_id FROM {_COLUMNS}"
    " WHERE EXISTS (SELECT 1 FROM jobs WHERE id = e.job_id)"
    " AND (SELECT l.type FROM job_events l WHERE l.file_id = e.file_id"
    "      AND l.type IN ('file.started', 'file.retrying', 'file.downloaded', 'file.failed')"
    "      ORDER BY l.id DESC LIMIT 1) = 'file.started'"
    " ORDER BY e.ord"
    " ON CONFLICT (file_id) WHERE type = 'file.progress' DO UPDATE SET"
    " id = nextval(pg_get_serial_sequence('job_events', 'id')),"
    " event_id = EXCLUDED.event_id, at = EXCLUDED.at, payload = EXCLUDED.payload,"
    " trace_id = EXCLUDED.trace_id, span_id = EXCLUDED.span_id, recorded_at = now()"
    " WHERE job_events.at <= EXCLUDED.at AND job_events.event_id <> EXCLUDED.event_id"
    " RETURNING event_id"
)


async def append(
    connection: Connection, events: Sequence[Event], spans: Mapping[str, trace.Span]
) -> list[Event]:
    """Add `events` (at most one progress per file) to their jobs' logs, two statements at most.

    Each row names the span that consumed its event (`spans` by event id, else the current
    one), so later work that fans in (a job's end) can link to it. Returns the events added:
    not replays, stale progress or events of unknown jobs.
    """
    progress = [e for e in events if isinstance(e, FileProgress)]
    others = [e for e in events if not isinstance(e, FileProgress)]
    added: set[str] = set()
    for statement, part in ((_APPEND, others), (_APPEND_PROGRESS, progress)):
        if part:
            rows = await connection.fetch(statement, *_arguments(part, spans))
            added.update(str(row["event_id"]) for row in rows)
    return [e for e in events if e.event_id in added]


def _arguments(events: Sequence[Event], spans: Mapping[str, trace.Span]) -> tuple[object, ...]:
    current = trace.get_current_span()
    contexts = [(spans.get(e.event_id) or current).get_span_context() for e in events]
    return (
        [e.job_id for e in events],
        [e.event_id for e in events],
        [tag(e) for e in events],
        [getattr(e, "file_id", None) for e in events],
        [e.at for e in events],
        [ENCODER.encode(e).decode() for e in events],
        [format(c.trace_id, "032x") if c.is_valid else None for c in contexts],
        [format(c.span_id, "016x") if c.is_valid else None for c in contexts],
    )


def tag(event: msgspec.Struct) -> str:
    """The event's wire tag ("file.downloaded")."""
    return str(type(event).__struct_config__.tag)
