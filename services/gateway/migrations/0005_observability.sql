-- Observability: the history of task runs, and each job's events for live progress (SSE).
-- Both are written by the tracker (services/gateway/history.py) and survive restarts.

-- One row per try of one task on one subject (a file, a composite, an export).
CREATE TABLE executions (
    id           bigserial PRIMARY KEY,
    task         text NOT NULL,              -- download, process, composite, export
    subject_id   text NOT NULL,              -- what the run worked on: file, composite or export id
    job_id       uuid REFERENCES jobs (id) ON DELETE CASCADE,
    file_id      uuid,
    -- The owner, copied in at insert so a user's history needs no join (exports have no job).
    user_id      uuid,
    worker       text,                       -- consumer name of the worker that ran it
    status       text NOT NULL,              -- running, completed, failed, retried, interrupted, cancelled
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    duration_s   double precision,
    error        text
);
-- Not unique per attempt: a re-driven dead letter starts again at attempt 1, and is a new run.
CREATE INDEX executions_subject ON executions (subject_id, id);
CREATE INDEX executions_job ON executions (job_id, id);
CREATE INDEX executions_user ON executions (user_id, id DESC);

-- A job's events in the order the tracker recorded them; `id` is the SSE event id.
-- Progress is kept once per file: a newer progress event moves its row to a new id, so a client
-- resuming with Last-Event-ID gets each file's latest progress, not every tick it missed.
CREATE TABLE job_events (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    event_id     uuid NOT NULL UNIQUE,
    type         text NOT NULL,
    file_id      uuid,
    at           double precision NOT NULL,  -- when it happened (Unix seconds), from the event
    payload      jsonb NOT NULL,
    -- The span that recorded it, so later work that fans in (a job's end) can link to it.
    trace_id     text,
    span_id      text,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job ON job_events (job_id, id);
CREATE UNIQUE INDEX job_events_progress ON job_events (file_id) WHERE type = 'file.progress';
