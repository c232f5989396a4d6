-- The overview's time in queue reads the first try of each run started in the last hour;
-- without this every load of it scanned the whole history.
CREATE INDEX executions_first_tries ON executions (started_at) WHERE attempt = 1;
