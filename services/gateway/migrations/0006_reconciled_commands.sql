-- Every command the reconciler keeps alive names its work in the outbox, not downloads only.

-- The work a row's command is for (NULL for events): a download's file id, `process:<file id>`,
-- `composite:<composite id>`, `export:<export id>`. The relay sets the command's live marker
-- under this key; the reconciler asks "has this work a row still on its way?" and "was it
-- re-published lately?" by it. `file_id` stays on download rows, where it always was.
ALTER TABLE outbox ADD COLUMN command_key text;
CREATE INDEX outbox_command ON outbox (command_key, created_at) WHERE command_key IS NOT NULL;
-- The reconciler asked by file_id before; command_key answers now.
DROP INDEX outbox_file;

-- Rows written before this migration: without their key the reconciler would take a queued
-- command for a lost one and publish it twice. Every body on these streams is our own JSON.
UPDATE outbox SET command_key = file_id::text WHERE file_id IS NOT NULL;
UPDATE outbox o SET command_key = CASE c.body ->> 'type'
        WHEN 'process.file' THEN 'process:' || (c.body ->> 'file_id')
        WHEN 'process.composite' THEN 'composite:' || (c.body ->> 'composite_id')
        WHEN 'export.build' THEN 'export:' || (c.body ->> 'export_id')
    END
  FROM (SELECT id, convert_from(body, 'UTF8')::jsonb AS body FROM outbox
         WHERE stream LIKE 'downlink:process:%' OR stream = 'downlink:exports') c
 WHERE o.id = c.id;

-- The BuildExport command as accepted. Its items were resolved once, when the export was
-- created; the reconciler publishes this again after a Redis loss, since resolving the
-- selection anew could put different files in the archive than the ones promised.
ALTER TABLE exports ADD COLUMN command bytea;
UPDATE exports e SET command = o.body FROM outbox o
 WHERE o.command_key = 'export:' || e.id::text AND e.status IN ('pending', 'building');

-- What a pass looks for: composites whose command was queued, exports not ended yet.
CREATE INDEX composites_queued ON composites (id) WHERE status = 'running';
CREATE INDEX exports_open ON exports (id) WHERE status IN ('pending', 'building');
