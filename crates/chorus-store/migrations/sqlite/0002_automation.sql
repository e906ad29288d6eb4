-- Users' scripts, their key-value state, auto-replies and the auto-reply window.

CREATE TABLE scripts (
    id                   TEXT PRIMARY KEY,
    owner_id             TEXT NOT NULL REFERENCES users (id),
    name                 TEXT NOT NULL,
    source               TEXT NOT NULL,
    -- Comma-separated hook names: "incoming", "outgoing" or "incoming,outgoing".
    hooks                TEXT NOT NULL,
    enabled              INTEGER NOT NULL,
    fail_closed          INTEGER NOT NULL,
    memory_bytes         INTEGER NOT NULL,
    cpu_ms               INTEGER NOT NULL,
    version              INTEGER NOT NULL,
    runs                 INTEGER NOT NULL DEFAULT 0,
    failures             INTEGER NOT NULL DEFAULT 0,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error_code      TEXT,
    last_error_message   TEXT,
    last_error_at        INTEGER,
    -- JSON array of strings.
    last_logs            TEXT NOT NULL DEFAULT '[]',
    disabled_reason      TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);

CREATE INDEX scripts_by_owner ON scripts (owner_id, created_at);

CREATE TABLE script_kv (
    script_id TEXT NOT NULL REFERENCES scripts (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    -- JSON text.
    value     TEXT NOT NULL,
    PRIMARY KEY (script_id, key)
) WITHOUT ROWID;

CREATE TABLE auto_replies (
    user_id    TEXT PRIMARY KEY REFERENCES users (id),
    enabled    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The last auto-reply per (owner, conversation, sender), for the window.
CREATE TABLE auto_reply_sent (
    owner_id        TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    sender_id       TEXT NOT NULL,
    trigger_id      TEXT NOT NULL,
    sent_at         INTEGER NOT NULL,
    PRIMARY KEY (owner_id, conversation_id, sender_id)
) WITHOUT ROWID;
