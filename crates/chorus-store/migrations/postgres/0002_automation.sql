-- Users' scripts, their key-value state, auto-replies and the auto-reply window.

CREATE TABLE scripts (
    id                   UUID PRIMARY KEY,
    owner_id             UUID NOT NULL REFERENCES users (id),
    name                 TEXT NOT NULL,
    source               TEXT NOT NULL,
    -- Comma-separated hook names: "incoming", "outgoing" or "incoming,outgoing".
    hooks                TEXT NOT NULL,
    enabled              BOOLEAN NOT NULL,
    fail_closed          BOOLEAN NOT NULL,
    memory_bytes         BIGINT NOT NULL,
    cpu_ms               BIGINT NOT NULL,
    version              BIGINT NOT NULL,
    runs                 BIGINT NOT NULL DEFAULT 0,
    failures             BIGINT NOT NULL DEFAULT 0,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    last_error_code      TEXT,
    last_error_message   TEXT,
    last_error_at        BIGINT,
    -- JSON array of strings.
    last_logs            TEXT NOT NULL DEFAULT '[]',
    disabled_reason      TEXT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE INDEX scripts_by_owner ON scripts (owner_id, created_at);

CREATE TABLE script_kv (
    script_id UUID NOT NULL REFERENCES scripts (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    -- JSON text.
    value     TEXT NOT NULL,
    PRIMARY KEY (script_id, key)
);

CREATE TABLE auto_replies (
    user_id    UUID PRIMARY KEY REFERENCES users (id),
    enabled    BOOLEAN NOT NULL,
    text       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The last auto-reply per (owner, conversation, sender), for the window.
CREATE TABLE auto_reply_sent (
    owner_id        UUID NOT NULL,
    conversation_id UUID NOT NULL,
    sender_id       UUID NOT NULL,
    trigger_id      UUID NOT NULL,
    sent_at         BIGINT NOT NULL,
    PRIMARY KEY (owner_id, conversation_id, sender_id)
);
