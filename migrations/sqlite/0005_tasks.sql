-- Async agent tasks (POST /v1/tasks) and the events each one produced, in
-- order, so a client can follow or resume them (Last-Event-ID).

CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    key_id TEXT,
    request_id TEXT NOT NULL,
    status TEXT NOT NULL,
    -- The gateway instance running it; a task whose owner is gone was
    -- interrupted.
    owner TEXT,
    request TEXT NOT NULL,
    model TEXT,
    result TEXT,
    error TEXT,
    cost_micros INTEGER NOT NULL DEFAULT 0,
    num_turns INTEGER NOT NULL DEFAULT 0,
    session_id TEXT,
    created_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER
);

CREATE INDEX tasks_project ON tasks (project_id, created_at_ms);
CREATE INDEX tasks_open ON tasks (status);

CREATE TABLE task_events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
);
