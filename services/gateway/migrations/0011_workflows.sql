-- Workflows: a DAG of steps, each a task or a download job, recorded when submitted and moved
-- by the tracker's projection in the transaction that ends a step's task or job, so a Redis
-- flush or a worker's SIGKILL loses nothing and a fan-in starts exactly once.
CREATE TABLE workflows (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name             text,                      -- the named workflow, or null for an inline DAG
    args             jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'running'
                     CHECK (status IN ('running', 'completed', 'partial', 'failed', 'cancelled')),
    allow_partial    boolean NOT NULL DEFAULT false,
    -- Top-level steps not ended yet: the workflow ends when it reaches 0 (counters, not counts).
    open_steps       integer NOT NULL,
    result           jsonb,
    error            text,
    trace_id         text,
    -- Every step's task or job is queued under these, so the whole workflow is one trace.
    trace_headers    jsonb NOT NULL DEFAULT '{}',
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX workflows_user ON workflows (user_id, created_at DESC, id);

CREATE TABLE workflow_steps (
    workflow_id      uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    key              text NOT NULL,             -- an expansion's steps: '<owner key>/<key>'
    position         integer NOT NULL,          -- submission (and expansion) order
    kind             text NOT NULL CHECK (kind IN ('task', 'download', 'export')),
    task             text NOT NULL,
    queue            text NOT NULL,
    priority         smallint NOT NULL,
    args             jsonb NOT NULL,
    input            text,                      -- the argument the parents' results feed
    after            text[] NOT NULL,           -- parents, in the order their results are fed
    gather           boolean NOT NULL,          -- fed as a list even from one parent (a fan-in)
    children         text[] NOT NULL,           -- the steps that have it in `after`
    -- The step whose result expanded into this one, or null for a top-level step.
    owner            text,
    status           text NOT NULL DEFAULT 'waiting'
                     CHECK (status IN ('waiting', 'launched', 'expanded', 'completed', 'failed',
                                       'cancelled', 'skipped')),
    waiting_on       integer NOT NULL,          -- parents not ended yet
    failed_parents   integer NOT NULL DEFAULT 0,
    open_children    integer NOT NULL DEFAULT 0, -- an expanded step's steps not ended yet
    task_id          uuid,
    job_id           uuid,
    export_id        uuid,
    result           jsonb,
    error            text,
    launched_at      timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (workflow_id, key)
);
CREATE INDEX workflow_steps_task ON workflow_steps (task_id) WHERE task_id IS NOT NULL;

ALTER TABLE tasks
    ADD COLUMN workflow_id uuid REFERENCES workflows (id) ON DELETE CASCADE,
    ADD COLUMN step text;
ALTER TABLE jobs
    ADD COLUMN workflow_id uuid REFERENCES workflows (id) ON DELETE CASCADE,
    ADD COLUMN step text;
ALTER TABLE exports
    ADD COLUMN workflow_id uuid REFERENCES workflows (id) ON DELETE CASCADE,
    ADD COLUMN step text;
