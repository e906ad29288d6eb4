-- Jobs and their results (one row each: a job has at most one result), and the
-- observer's configuration as an administrator set it. Credentials are never stored.

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    owner_id      TEXT NOT NULL REFERENCES users (id),
    -- queued, running, succeeded, failed, timed_out
    status        TEXT NOT NULL,
    -- JSON: {"script": "..."} or {"git": {"url", "ref", "path"}}
    source        TEXT NOT NULL,
    cpu_ms        INTEGER NOT NULL,
    memory_bytes  INTEGER NOT NULL,
    submitted_at  INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    -- JSON text of what main returned.
    output        TEXT,
    error_code    TEXT,
    error_message TEXT,
    elapsed_ms    INTEGER
);

CREATE INDEX jobs_by_owner ON jobs (owner_id, submitted_at);

CREATE TABLE observer_config (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    config TEXT NOT NULL
);
