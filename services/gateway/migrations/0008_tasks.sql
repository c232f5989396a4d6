-- User-defined tasks (services/tasks): one row per enqueue, moved by the tracker's projection
-- of the task events (forward only), and the record a lost or delayed command is rebuilt from.
CREATE TABLE tasks (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    task             text NOT NULL,             -- the registered name
    queue            text NOT NULL,
    args             jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'dead')),
    priority         smallint NOT NULL CHECK (priority BETWEEN 1 AND 10),
    attempts         integer NOT NULL DEFAULT 0,  -- the latest try started
    -- The latest try reported failed (TaskRetrying): a late TaskStarted of it changes nothing.
    ended_attempt    integer NOT NULL DEFAULT 0,
    progress         jsonb,                     -- {done, total, message, at}
    result           jsonb,
    error            text,                      -- the last error, with its traceback
    worker           text,
    run_at           timestamptz NOT NULL DEFAULT now(),  -- not before: a delayed task
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    trace_id         text,
    idempotency_key  text,
    -- The RunTask as accepted: the reconciler publishes it again after a Redis loss, and
    -- releases a delayed task by publishing it once due.
    command          bytea NOT NULL,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX tasks_user ON tasks (user_id, created_at DESC, id);
-- What a reconciler pass and a queue position look at.
CREATE INDEX tasks_pending ON tasks (queue, priority, created_at, id) WHERE status = 'pending';
