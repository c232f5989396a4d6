-- Schedules (services/gateway/schedules): what to enqueue, on which cadence, and when next. The
-- scheduler of the gateway holding the schedules' advisory lock fires the due ones, one
-- transaction per run: the task, then next_run_at moved past now.
CREATE TABLE schedules (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text,                        -- a label of the owner's, not unique
    -- Exactly one cadence: a 5-field cron expression in `timezone`, or a fixed interval.
    cron          text,
    timezone      text NOT NULL DEFAULT 'UTC',  -- an IANA name; cron only
    every_s       double precision CHECK (every_s >= 1),
    CHECK ((cron IS NULL) <> (every_s IS NULL)),
    -- The target, checked against its registered type when the schedule was made: a run
    -- enqueues it as is, even while no worker of it is up.
    task          text NOT NULL,
    args          jsonb NOT NULL,
    queue         text NOT NULL,
    priority      smallint NOT NULL CHECK (priority BETWEEN 1 AND 10),
    task_unique   boolean NOT NULL DEFAULT false,  -- the type's `unique` policy
    -- The task is a @workflow: each run starts a workflow of it (POST /api/v1/workflows).
    workflow      boolean NOT NULL DEFAULT false,
    -- Runs missed while no scheduler ran: 'skip' them, or fire 'once' for all of them.
    missed        text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'once')),
    paused        boolean NOT NULL DEFAULT false,
    next_run_at   timestamptz NOT NULL,
    last_run_at   timestamptz,                 -- when the latest run was enqueued
    last_task_id  uuid,
    last_workflow_id uuid,                     -- a workflow schedule's latest run
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_user ON schedules (user_id, created_at DESC, id);
-- What every tick of the scheduler asks.
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE NOT paused;
