-- Files users upload: the bytes are in the object store under `attachments/<id>`;
-- this is what is known of them. A row is made before the bytes are written
-- (`ready` false) and completed after, so that an upload cut short by a crash is found
-- and removed by the sweeper. `size` counts against the owner's quota once ready.
CREATE TABLE attachments (
    id           UUID PRIMARY KEY,
    owner_id     UUID NOT NULL REFERENCES users (id),
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL DEFAULT 0,
    sha256       TEXT NOT NULL DEFAULT '',
    ready        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT NOT NULL
);

CREATE INDEX attachments_by_owner ON attachments (owner_id);
CREATE INDEX attachments_by_age ON attachments (created_at);

-- Which messages carry which files: who may read a file, and which files are in use.
CREATE TABLE message_attachments (
    attachment_id   UUID NOT NULL,
    message_id      UUID NOT NULL,
    conversation_id UUID NOT NULL,
    PRIMARY KEY (attachment_id, message_id)
);

CREATE INDEX message_attachments_by_message ON message_attachments (message_id);

-- The attachments' shapes as the message carries them (JSON array); NULL: none.
ALTER TABLE messages ADD COLUMN attachments TEXT;
