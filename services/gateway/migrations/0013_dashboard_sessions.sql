-- Dashboard sign-ins (services/gateway/dashboard/sessions.py): one row per browser session.
-- Only the SHA-256 of the cookie's value is kept, as for API tokens; logging out deletes the
-- row, and revoking (or deleting) the API token the person signed in with ends the session too.
CREATE TABLE dashboard_sessions (
    session_hash  bytea PRIMARY KEY,
    token_hash    bytea NOT NULL REFERENCES api_tokens (token_hash) ON DELETE CASCADE,
    -- Every form POST of the session carries this value back; anything else is refused (403).
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
