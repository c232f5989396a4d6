-- Exports: archives of a user's stored files, built by the exporter from one BuildExport command.

CREATE TABLE exports (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The job whose automatic export this is (submit's `export` option); NULL when asked for
    -- over POST /downloads/export. A re-driven job that ends again gets a new export.
    job_id            uuid REFERENCES jobs (id) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'pending',  -- pending, building, ready, failed, cancelled
    format            text NOT NULL CHECK (format IN ('zip', 'tar.gz')),
    include_metadata  boolean NOT NULL,
    file_count        integer NOT NULL,                 -- items in the archive, metadata files aside
    total_bytes       bigint NOT NULL,                  -- their bytes before compression
    files_done        integer NOT NULL DEFAULT 0,
    bytes_done        bigint NOT NULL DEFAULT 0,
    filepath          text,                             -- storage key of the archive once ready
    size              bigint,
    sha256            text,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX exports_user_created ON exports (user_id, created_at DESC);
CREATE INDEX exports_job ON exports (job_id, created_at DESC) WHERE job_id IS NOT NULL;
