-- Users, tokens, jobs, files, the outbox and the tracker's processed-event table.

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    token_hash  bytea PRIMARY KEY,           -- SHA-256 of the token; the token itself is never stored
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending',
    priority         smallint NOT NULL CHECK (priority BETWEEN 1 AND 10),
    metadata         jsonb NOT NULL DEFAULT '{}',
    options          jsonb NOT NULL DEFAULT '{}',
    idempotency_key  text,
    error            text,
    total_files      integer NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX jobs_user_created ON jobs (user_id, created_at DESC);
CREATE INDEX jobs_unfinished ON jobs (status) WHERE finished_at IS NULL;

CREATE TABLE files (
    id                uuid PRIMARY KEY,
    job_id            uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position          integer NOT NULL,
    url               text NOT NULL,
    requested_name    text,
    expected_sha256   text,
    status            text NOT NULL DEFAULT 'pending',
    filename          text,
    filepath          text,
    size              bigint,
    sha256            text,
    content_type      text,
    bytes_downloaded  bigint NOT NULL DEFAULT 0,
    total_bytes       bigint,
    rate_bps          double precision,
    attempts          integer NOT NULL DEFAULT 0,
    error             text,
    started_at        timestamptz,
    downloaded_at     timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, position)
);
CREATE INDEX files_job ON files (job_id, position);
CREATE INDEX files_pending ON files (status) WHERE status IN ('pending', 'downloading');
CREATE INDEX files_recent_done ON files (downloaded_at) WHERE downloaded_at IS NOT NULL;

CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    stream      text NOT NULL,
    body        bytea NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

CREATE TABLE processed_events (
    event_id      uuid PRIMARY KEY,
    processed_at  timestamptz NOT NULL DEFAULT now()
);
