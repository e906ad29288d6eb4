-- Files users upload: the bytes are in the object store under `attachments/<id>`;
-- this is what is known of them. A row is made before the bytes are written
-- (`ready` 0) and completed after, so that an upload cut short by a crash is found and
-- removed by the sweeper. `size` counts against the owner's quota once ready.
CREATE TABLE attachments (
    id           TEXT PRIMARY KEY,
    owner_id     TEXT NOT NULL REFERENCES users (id),
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL DEFAULT 0,
    sha256       TEXT NOT NULL DEFAULT '',
    ready        INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);

CREATE INDEX attachments_by_owner ON attachments (owner_id);
CREATE INDEX attachments_by_age ON attachments (created_at);

-- Which messages carry which files: who may read a file, and which files are in use.
CREATE TABLE message_attachments (
    attachment_id   TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (attachment_id, message_id)
) WITHOUT ROWID;

CREATE INDEX message_attachments_by_message ON message_attachments (message_id);

-- The attachments' shapes as the message carries them (JSON array); NULL: none.
ALTER TABLE messages ADD COLUMN attachments TEXT;
