-- Projects and their optional limits, in micro-dollars.
CREATE TABLE projects (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    daily_limit_micros INTEGER,
    weekly_limit_micros INTEGER,
    monthly_limit_micros INTEGER,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

INSERT INTO projects (id, name, created_at_ms, updated_at_ms) VALUES ('default', 'Default project', 0, 0);

-- Running totals per project and calendar period. `reserved` holds what
-- in-flight requests may still spend; `spent` what settled requests cost.
CREATE TABLE period_totals (
    project_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    spent_micros INTEGER NOT NULL DEFAULT 0,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, kind, period_start)
);

-- The ledger: one row per request that reached the gateway. A row with
-- status 'in_progress' is also the request's budget reservation.
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY NOT NULL,
    created_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    project_id TEXT NOT NULL,
    key_id TEXT,
    endpoint TEXT NOT NULL,
    model_requested TEXT,
    model_used TEXT,
    status TEXT NOT NULL,
    http_status INTEGER,
    error_message TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER NOT NULL DEFAULT 0,
    reserved_micros INTEGER NOT NULL DEFAULT 0,
    latency_ms INTEGER,
    ttft_ms INTEGER,
    day_start INTEGER,
    week_start INTEGER,
    month_start INTEGER,
    owner TEXT,
    expires_at_ms INTEGER
);

CREATE INDEX requests_project_time ON requests (project_id, created_at_ms);
CREATE INDEX requests_in_progress ON requests (status, owner) WHERE status = 'in_progress';

-- Gateway instances, for releasing the reservations of one that died.
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    heartbeat_at_ms INTEGER NOT NULL
);
