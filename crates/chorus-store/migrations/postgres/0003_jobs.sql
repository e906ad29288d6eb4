-- Jobs and their results (one row each: a job has at most one result), and the
-- observer's configuration as an administrator set it. Credentials are never stored.

CREATE TABLE jobs (
    id            UUID PRIMARY KEY,
    owner_id      UUID NOT NULL REFERENCES users (id),
    -- queued, running, succeeded, failed, timed_out
    status        TEXT NOT NULL,
    -- JSON: {"script": "..."} or {"git": {"url", "ref", "path"}}
    source        TEXT NOT NULL,
    cpu_ms        BIGINT NOT NULL,
    memory_bytes  BIGINT NOT NULL,
    submitted_at  BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    -- JSON text of what main returned.
    output        TEXT,
    error_code    TEXT,
    error_message TEXT,
    elapsed_ms    BIGINT
);

CREATE INDEX jobs_by_owner ON jobs (owner_id, submitted_at);

CREATE TABLE observer_config (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    config TEXT NOT NULL
);
