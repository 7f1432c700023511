-- Projects and their optional limits, in micro-dollars.
CREATE TABLE projects (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    daily_limit_micros BIGINT,
    weekly_limit_micros BIGINT,
    monthly_limit_micros BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

INSERT INTO projects (id, name, created_at_ms, updated_at_ms) VALUES ('default', 'Default project', 0, 0);

-- Running totals per project and calendar period. `reserved` holds what
-- in-flight requests may still spend; `spent` what settled requests cost.
CREATE TABLE period_totals (
    project_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, kind, period_start)
);

-- The ledger: one row per request that reached the gateway. A row with
-- status 'in_progress' is also the request's budget reservation.
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY NOT NULL,
    created_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT,
    project_id TEXT NOT NULL,
    key_id TEXT,
    endpoint TEXT NOT NULL,
    model_requested TEXT,
    model_used TEXT,
    status TEXT NOT NULL,
    http_status INTEGER,
    error_message TEXT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    latency_ms BIGINT,
    ttft_ms BIGINT,
    day_start BIGINT,
    week_start BIGINT,
    month_start BIGINT,
    owner TEXT,
    expires_at_ms BIGINT
);

CREATE INDEX requests_project_time ON requests (project_id, created_at_ms);
CREATE INDEX requests_in_progress ON requests (status, owner) WHERE status = 'in_progress';

-- Gateway instances, for releasing the reservations of one that died.
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    heartbeat_at_ms BIGINT NOT NULL
);
