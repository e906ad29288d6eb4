-- Edits, deletes and reactions (protocol v1.1 §1, §2): entries of the conversation's
-- stream like messages, each naming the message it changes.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
ALTER TABLE messages ADD COLUMN target_id UUID;
ALTER TABLE messages ADD COLUMN emoji TEXT;
ALTER TABLE messages ADD COLUMN remove BOOLEAN NOT NULL DEFAULT FALSE;
-- What changes did to a message: deleted (its body and attachments erased), edited.
ALTER TABLE messages ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN edited_at BIGINT;

-- The changes of a message (its latest edit; the edits a delete erases).
CREATE INDEX messages_changes ON messages (target_id, seq) WHERE target_id IS NOT NULL;
-- The entries that are not unread messages (changes, deleted messages), counted after
-- a read marker.
CREATE INDEX messages_not_unread ON messages (conversation_id, seq)
    WHERE kind <> 'text' OR deleted;

-- The reactions there now: one per (user, message, emoji).
CREATE TABLE reactions (
    target_id UUID NOT NULL,
    user_id   UUID NOT NULL,
    emoji     TEXT NOT NULL,
    PRIMARY KEY (target_id, user_id, emoji)
);

-- Whom a message mentions changes with its edits: its rows are found by message.
CREATE INDEX message_mentions_by_message ON message_mentions (conversation_id, seq);

-- Full-text search of messages' current bodies, case- and accent-insensitive: words
-- as they are ('simple': no stemming, no stop words, any language), accents taken off.
-- `unaccent` is not IMMUTABLE (its dictionary could change), so an index cannot call it
-- directly: this wrapper names the dictionary and promises what an index needs.
CREATE EXTENSION IF NOT EXISTS unaccent;

CREATE FUNCTION chorus_search_text(body TEXT) RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT to_tsvector('simple'::regconfig, public.unaccent('public.unaccent'::regdictionary, body)) $$;

CREATE FUNCTION chorus_search_query(words TEXT) RETURNS tsquery
    LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
    AS $$ SELECT to_tsquery('simple'::regconfig, public.unaccent('public.unaccent'::regdictionary, words)) $$;

-- Each word is indexed with its conversation's tag in front (`<tag><word>`, see
-- `search_text` in lib.rs), so that a search reads only the postings of the caller's
-- conversations, however common its words are elsewhere. The messages stored before
-- this migration get the same: the tag (the last 8 hex digits of the conversation's
-- id, spelled with the letters a to p) before each run of letters and digits.
ALTER TABLE messages ADD COLUMN search tsvector;
UPDATE messages SET search = chorus_search_text(regexp_replace(
    ' ' || regexp_replace(body, '[^[:alnum:]]+', ' ', 'g'),
    ' ([[:alnum:]])',
    ' ' || translate(right(conversation_id::text, 8), '0123456789abcdef', 'abcdefghijklmnop')
        || '\1',
    'g'));
CREATE INDEX messages_search ON messages USING gin (search) WHERE search IS NOT NULL;
