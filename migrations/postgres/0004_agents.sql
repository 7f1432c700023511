-- Agent policies set through the admin API (they win over the settings'
-- agent_policies), stored as the policy's JSON.
CREATE TABLE agent_policies (
    project_id TEXT PRIMARY KEY NOT NULL,
    policy TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Which project owns which Claude Code session, and where it runs: only
-- the owner may resume it.
CREATE TABLE agent_sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    last_used_ms BIGINT NOT NULL
);

CREATE INDEX agent_sessions_project ON agent_sessions (project_id);
