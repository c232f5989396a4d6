-- Crash-proof delivery: the file each download command is for, per-job timeouts, re-driven jobs.

-- The file a download row carries (NULL for events): the reconciler asks "has this pending
-- file a row still on its way?" and "was it re-published lately?" by this column.
ALTER TABLE outbox ADD COLUMN file_id uuid;
CREATE INDEX outbox_file ON outbox (file_id, created_at) WHERE file_id IS NOT NULL;

-- Rows written before this migration and not sent yet: without their file id the reconciler
-- would publish those files a second time. Every body on a download lane is our own JSON.
UPDATE outbox SET file_id = (convert_from(body, 'UTF8')::jsonb ->> 'file_id')::uuid
 WHERE sent_at IS NULL AND stream LIKE 'downlink:downloads:%';

-- A job's own timeout in seconds (NULL: DOWNLINK_JOB_TIMEOUT applies).
ALTER TABLE jobs ADD COLUMN timeout_s integer CHECK (timeout_s > 0);

-- Set when an admin re-drives a dead letter of an ended job: its timeout counts from here,
-- or an old job would time out again at the reconciler's next pass.
ALTER TABLE jobs ADD COLUMN reopened_at timestamptz;
