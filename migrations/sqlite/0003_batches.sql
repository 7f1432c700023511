-- Batches (the OpenAI Batch API), durable across restarts.

-- Uploaded input files (purpose 'batch') and the output and error files a
-- batch writes when it ends (purpose 'batch_output'). Private to a project.
CREATE TABLE batch_files (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    content BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE INDEX batch_files_project ON batch_files (project_id, created_at_ms);

-- One row per batch. `owner` is the gateway instance driving it; a batch
-- whose owner is no longer registered is taken over by the next instance.
CREATE TABLE batches (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    errors TEXT,
    metadata TEXT,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    in_progress_at_ms INTEGER,
    finalizing_at_ms INTEGER,
    completed_at_ms INTEGER,
    failed_at_ms INTEGER,
    expired_at_ms INTEGER,
    cancelling_at_ms INTEGER,
    cancelled_at_ms INTEGER
);

CREATE INDEX batches_project ON batches (project_id, created_at_ms);
CREATE INDEX batches_open ON batches (status)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

-- One row per request of a batch: pending → running → succeeded | failed
-- (or cancelled / expired without running). The result is written in the
-- same statement that ends the row, so a finished request is never lost
-- and never runs again.
CREATE TABLE batch_requests (
    batch_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    started_at_ms INTEGER,
    finished_at_ms INTEGER,
    http_status INTEGER,
    result TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line_no)
);

CREATE INDEX batch_requests_status ON batch_requests (batch_id, status);
