-- A message may answer an earlier message of its conversation (protocol v1.1 §2, §4).
ALTER TABLE messages ADD COLUMN reply_to TEXT;

-- The answers to one message, in order: only messages that answer something are in it,
-- so the index costs the messages that do not nothing.
CREATE INDEX messages_replies ON messages (conversation_id, reply_to, seq)
    WHERE reply_to IS NOT NULL;
