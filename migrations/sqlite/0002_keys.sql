-- Project API keys. Only a SHA-256 hash of each secret is stored.
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER,
    rpm_limit INTEGER,
    tpm_limit INTEGER,
    max_concurrent INTEGER
);

CREATE INDEX api_keys_project ON api_keys (project_id);

-- Fixed one-minute windows for request and token rate limits, shared by
-- every instance that uses this database.
CREATE TABLE rate_windows (
    key_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (key_id, kind, window_start)
);
