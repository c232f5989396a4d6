-- The retention purge looks for ended tasks by when they ended; without this every batch of it
-- scanned the whole table.
CREATE INDEX tasks_ended ON tasks ((coalesce(finished_at, updated_at)))
    WHERE status IN ('completed', 'failed', 'cancelled', 'dead');
