-- Follow-up tasks (ctx.enqueue) name the task that queued them; checkpoints (ctx.checkpoint)
-- survive a Redis loss, since the reconciler puts the row's one in the command it re-publishes.
ALTER TABLE tasks
    ADD COLUMN parent_id uuid REFERENCES tasks (id) ON DELETE SET NULL,
    ADD COLUMN checkpoint jsonb,
    -- Unix time of the checkpoint's event: a late or replayed one changes nothing.
    ADD COLUMN checkpoint_at double precision;
-- Deleting a parent (its user's deletion) finds its children by this.
CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
