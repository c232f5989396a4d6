-- Processing: per-file step state, job-level band composites and the artifacts made from both.

-- NULL: the job asked for no processing, or the file is not downloaded yet.
ALTER TABLE files ADD COLUMN processing_status text
    CHECK (processing_status IN ('pending', 'completed', 'failed'));
-- The steps asked for this file, copied from the job when its ProcessFile command is queued.
ALTER TABLE files ADD COLUMN processing_steps text[];
-- step -> message for the steps that failed, as the processor reported them.
ALTER TABLE files ADD COLUMN processing_errors jsonb;
-- One line for people, e.g. "thumbnail: not a raster or image (detected text/plain)".
ALTER TABLE files ADD COLUMN processing_error text;
-- Set when FileProcessed arrived; the file completes once its artifacts are recorded too,
-- since the tracker may project a FileProcessed before the ArtifactCreated events before it.
ALTER TABLE files ADD COLUMN processing_reported_at timestamptz;
CREATE INDEX files_processing_open ON files (job_id) WHERE processing_status = 'pending';

CREATE TABLE composites (
    id            uuid PRIMARY KEY,             -- derived from the job id and position
    job_id        uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position      integer NOT NULL,             -- index in the submitted `composites` list
    kind          text NOT NULL CHECK (kind IN ('ndvi', 'rgb')),
    bands         jsonb NOT NULL,               -- role -> file name, as submitted
    band_files    jsonb NOT NULL DEFAULT '{}',  -- role -> file id, resolved once
    bounds        double precision[] CHECK (bounds IS NULL OR cardinality(bounds) = 4),
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    error         text,
    reported_at   timestamptz,                  -- CompositeFinished arrived (see files above)
    reported_error text,
    queued_at     timestamptz,                  -- its BuildComposite left through the outbox
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    UNIQUE (job_id, position)
);

CREATE TABLE artifacts (
    id            uuid PRIMARY KEY,             -- downloads through /api/v1/downloads/files/{id}
    job_id        uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    file_id       uuid REFERENCES files (id) ON DELETE CASCADE,
    composite_id  uuid REFERENCES composites (id) ON DELETE CASCADE,
    kind          text NOT NULL,
    filepath      text,                         -- NULL for data-only artifacts (metadata)
    size          bigint NOT NULL DEFAULT 0,
    sha256        text,
    content_type  text,
    metadata      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (file_id IS NOT NULL OR composite_id IS NOT NULL)
);
CREATE INDEX artifacts_job ON artifacts (job_id);
CREATE INDEX artifacts_file ON artifacts (file_id) WHERE file_id IS NOT NULL;
CREATE INDEX artifacts_composite ON artifacts (composite_id) WHERE composite_id IS NOT NULL;
