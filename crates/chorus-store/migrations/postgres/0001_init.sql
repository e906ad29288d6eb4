-- Users, conversations, members and messages: the SQLite schema with native types.
-- Times stay milliseconds since the Unix epoch (BIGINT) so that both backends store,
-- compare and round exactly the same values.

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    -- Byte order, as SQLite's BINARY: the prefix search is a range scan on this index,
    -- which a linguistic collation would turn into a different (and wrong) range.
    username      TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE conversations (
    id         UUID PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    title      TEXT,
    owner_id   UUID REFERENCES users (id),
    -- "<smaller user id>:<larger user id>" for direct conversations: one per pair.
    direct_key TEXT UNIQUE,
    last_seq   BIGINT NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at BIGINT NOT NULL
);

CREATE TABLE members (
    conversation_id UUID NOT NULL REFERENCES conversations (id),
    user_id         UUID NOT NULL REFERENCES users (id),
    joined_at       BIGINT NOT NULL,
    -- Breaks ties between members who joined in the same millisecond (SQLite uses
    -- the rowid): members are listed by (joined_at, joined_order).
    joined_order    BIGINT GENERATED ALWAYS AS IDENTITY,
    read_seq        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE messages (
    conversation_id UUID NOT NULL REFERENCES conversations (id),
    seq             BIGINT NOT NULL CHECK (seq > 0),
    -- Derived from (sender_id, client_msg_id): unique means idempotent sends.
    message_id      UUID NOT NULL UNIQUE,
    client_msg_id   TEXT NOT NULL,
    sender_id       UUID NOT NULL,
    body            TEXT NOT NULL,
    sent_at         BIGINT NOT NULL,
    origin          TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
