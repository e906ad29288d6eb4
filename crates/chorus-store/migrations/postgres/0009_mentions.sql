-- Who a message mentions (protocol v1.1 §1, §4): the members named as @username in
-- its body, as the message carries them (JSON array of ids; NULL: nobody) ...
ALTER TABLE messages ADD COLUMN mentions TEXT;

-- ... and by user, so that a conversation's mentions after a read marker are counted
-- from an index (mentions_unread).
CREATE TABLE message_mentions (
    user_id         UUID NOT NULL,
    conversation_id UUID NOT NULL,
    seq             BIGINT NOT NULL,
    PRIMARY KEY (user_id, conversation_id, seq)
);
