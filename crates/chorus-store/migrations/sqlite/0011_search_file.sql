-- The search index moves to a database file of its own beside this one, written by a
-- connection of its own (see search_index.rs): indexing no longer lengthens the
-- transaction that every message waits for. `search_id` becomes every entry's place in
-- the order entries were stored (changes too), which the index follows to learn what
-- to index; the new file is filled from the messages after the store opens.
DROP INDEX messages_unindexed;
DROP TABLE message_search;
UPDATE messages SET search_id = numbered.id
FROM (
    SELECT message_id,
           (SELECT coalesce(max(search_id), 0) FROM messages)
               + row_number() OVER (ORDER BY sent_at, conversation_id, seq) AS id
    FROM messages WHERE search_id IS NULL
) AS numbered
WHERE messages.message_id = numbered.message_id;
