-- Edits, deletes and reactions (protocol v1.1 §1, §2): entries of the conversation's
-- stream like messages, each naming the message it changes.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
ALTER TABLE messages ADD COLUMN target_id TEXT;
ALTER TABLE messages ADD COLUMN emoji TEXT;
ALTER TABLE messages ADD COLUMN remove INTEGER NOT NULL DEFAULT 0;
-- What changes did to a message: deleted (its body and attachments erased), edited.
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
-- Its row in `message_search` (messages only).
ALTER TABLE messages ADD COLUMN search_id INTEGER;

-- The changes of a message (its latest edit; the edits a delete erases).
CREATE INDEX messages_changes ON messages (target_id, seq) WHERE target_id IS NOT NULL;
-- The entries that are not unread messages (changes, deleted messages), counted after
-- a read marker.
CREATE INDEX messages_not_unread ON messages (conversation_id, seq)
    WHERE kind <> 'text' OR deleted;

-- The reactions there now: one per (user, message, emoji).
CREATE TABLE reactions (
    target_id TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    emoji     TEXT NOT NULL,
    PRIMARY KEY (target_id, user_id, emoji)
) WITHOUT ROWID;

-- Whom a message mentions changes with its edits: its rows are found by message.
CREATE INDEX message_mentions_by_message ON message_mentions (conversation_id, seq);

-- Full-text search of messages' current bodies, case- and accent-insensitive. A rowid
-- per message (`messages.search_id`), in the order they were stored: newest first is
-- descending rowid. Each word is indexed with its conversation's tag in front
-- (`<tag><word>`, see `search_text` in lib.rs), so that a search reads only the
-- postings of the caller's conversations, however common its words are elsewhere.
-- Contentless (the bodies are in `messages`, not copied here), with deletes. The
-- messages stored before this migration are indexed when the store opens (`search_id`
-- NULL).
CREATE VIRTUAL TABLE message_search USING fts5 (
    body,
    content = '',
    contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE INDEX messages_by_search_id ON messages (search_id) WHERE search_id IS NOT NULL;
-- The messages not indexed yet: those stored before this migration (a message is given
-- its `search_id` when it is stored), so that the store finds them at start without
-- reading the table, and the index is empty once they are done.
CREATE INDEX messages_unindexed ON messages (sent_at)
    WHERE search_id IS NULL AND kind = 'text' AND NOT deleted;
