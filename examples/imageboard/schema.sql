-- The image board's own tables, in a schema of their own so they never meet Downlink's.
-- Apply once, e.g. `psql "$DATABASE_URL" -f examples/imageboard/schema.sql`; it is idempotent.
CREATE SCHEMA IF NOT EXISTS imageboard;

CREATE TABLE IF NOT EXISTS imageboard.posts (
    id bigint PRIMARY KEY,
    rating double precision,            -- Bayesian average of the votes; NULL until rated
    votes integer NOT NULL DEFAULT 0,   -- how many votes the rating counted
    rated_at timestamptz
);

CREATE TABLE IF NOT EXISTS imageboard.votes (
    post_id bigint NOT NULL REFERENCES imageboard.posts (id) ON DELETE CASCADE,
    user_id bigint NOT NULL,
    score smallint NOT NULL CHECK (score BETWEEN 1 AND 5),
    PRIMARY KEY (post_id, user_id)
);
