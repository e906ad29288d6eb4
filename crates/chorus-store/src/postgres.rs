//! PostgreSQL store: a connection pool shared by every node of a cluster.
//!
//! Unlike SQLite, several processes write at once: two store-stage instances may hold
//! the same conversation for a moment while the log moves a partition between them.
//! Sequence numbers stay contiguous because every batch locks the rows of its
//! conversations before it reads `last_seq` or looks for already stored messages.

use crate::append::Stored;
use crate::backend::{Backend, MESSAGE_COLUMNS, new_direct};
use crate::{Appended, ConversationRecord, NewMessage, Result, direct_key, millis};
use chorus_core::model::{Attachment, Message};
use chorus_core::{ConversationId, MessageId, UserId};
use chrono::Utc;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per process; the server's `max_connections` bounds the cluster total.
const MAX_CONNECTIONS: u32 = 10;

/// How long a query waits for a free connection before the store reports itself
/// unavailable ([`crate::StoreError::is_unavailable`]) instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database named by a `postgres://` URL and migrates it.
    ///
    /// Nodes starting together may all call this: the migrator holds an advisory lock,
    /// so the schema is created once.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

/// Whether a PostgreSQL error code means the server cannot serve now (shutting down,
/// starting up, out of connections, connection lost) rather than a bad query.
pub(crate) fn unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "53300" | "57P01" | "57P02" | "57P03")
}

/// A conversation with its members in joining order, read in one statement so that
/// the two agree.
const CONVERSATION_COLUMNS: &str = "c.id, c.kind, c.title, c.owner_id, c.last_seq, c.created_at, \
     ARRAY(SELECT m.user_id FROM members m WHERE m.conversation_id = c.id \
           ORDER BY m.joined_at, m.joined_order) AS members";

impl PostgresStore {
    /// A conversation read with [`CONVERSATION_COLUMNS`].
    fn conversation_with_members(row: &PgRow) -> Result<ConversationRecord> {
        let members: Vec<Uuid> = row.try_get("members")?;
        Self::conversation_row(row, members.into_iter().map(UserId).collect())
    }
}

impl Backend for PostgresStore {
    type Db = Postgres;
    /// Native UUID.
    type Id = Uuid;

    /// An identity column, numbered as members are inserted.
    const JOINED_ORDER: &'static str = "joined_order";
    const GREATEST: &'static str = "GREATEST";
    const LEAST: &'static str = "LEAST";
    /// Several processes write at once: the rows are locked until the transaction ends.
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    /// The message's `search` column (a tsvector, GIN-indexed with its conversation)
    /// holds its current body's words.
    const SEARCH_EDIT: Option<&'static str> =
        Some("UPDATE messages SET search = chorus_search_text($1) WHERE message_id = $2");
    const SEARCH_ERASE: Option<&'static str> =
        Some("UPDATE messages SET search = NULL WHERE message_id = $1");

    /// `to_tsquery`'s syntax. A word has only letters and digits; quoted, whatever
    /// `unaccent` makes of it stays one word.
    const SEARCH_OR: &'static str = " | ";
    const SEARCH_AND: &'static str = " & ";
    fn search_prefix(tagged_word: &str) -> String {
        format!("'{tagged_word}':*")
    }

    fn id(id: Uuid) -> Uuid {
        id
    }

    fn get_id(row: &PgRow, column: &str) -> Result<Uuid> {
        Ok(row.try_get(column)?)
    }

    fn get_opt_id(row: &PgRow, column: &str) -> Result<Option<Uuid>> {
        Ok(row.try_get(column)?)
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn write(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Takes the row lock of a conversation until the transaction ends. `NO KEY UPDATE`
    /// (what an `UPDATE` of `last_seq` takes anyway) excludes other writers of the row
    /// but not the key-share locks that inserting members and messages take on it.
    async fn lock_conversation(
        tx: &mut Transaction<'_, Postgres>,
        conversation: ConversationId,
    ) -> Result<()> {
        sqlx::query("SELECT 1 FROM conversations WHERE id = $1 FOR NO KEY UPDATE")
            .bind(conversation.0)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(())
    }

    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<Appended>> {
        let conversations: Vec<Uuid> = crate::append::conversations(batch)
            .iter()
            .map(|c| c.0)
            .collect();
        let message_ids: Vec<Uuid> = crate::append::lookups(batch).iter().map(|m| m.0).collect();
        let reacted: Vec<Uuid> = crate::append::reaction_targets(batch)
            .iter()
            .map(|m| m.0)
            .collect();

        let mut tx = self.pool.begin().await?;
        // Locked in id order, so that two batches sharing conversations cannot deadlock.
        // Holding the locks, this transaction sees every message a previous holder
        // committed: the lookup below and the seqs after `last_seq` are then exact.
        let last_seq: HashMap<ConversationId, i64> = sqlx::query(
            "SELECT id, last_seq FROM conversations WHERE id = ANY($1) \
             ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&conversations)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((ConversationId(r.try_get("id")?), r.try_get("last_seq")?)))
        .collect::<Result<_>>()?;
        // The messages the changes target are read after the conversations are locked:
        // no other writer changes them until this one commits.
        let messages: HashMap<MessageId, Message> = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ANY($1)"
        ))
        .bind(&message_ids)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Self::message_row(r).map(|m| (m.message_id, m)))
        .collect::<Result<_>>()?;
        let mut reactions = HashSet::new();
        if !reacted.is_empty() {
            for r in sqlx::query(
                "SELECT target_id, user_id, emoji FROM reactions WHERE target_id = ANY($1)",
            )
            .bind(&reacted)
            .fetch_all(&mut *tx)
            .await?
            {
                reactions.insert((
                    MessageId(r.try_get("target_id")?),
                    UserId(r.try_get("user_id")?),
                    r.try_get("emoji")?,
                ));
            }
        }

        let plan = crate::append::plan(
            batch,
            Stored {
                messages,
                last_seq,
                reactions,
            },
        )?;
        let new = plan.new_messages();
        if !new.is_empty() {
            // One statement for the whole batch: arrays of columns, zipped by UNNEST.
            sqlx::query(
                "INSERT INTO messages (message_id, client_msg_id, conversation_id, seq, \
                 sender_id, body, sent_at, origin, attachments, reply_to, mentions, kind, \
                 target_id, emoji, remove, search) \
                 SELECT i, c, conv, s, u, b, t, o, a, r, mn, k, tg, e, rm, \
                 CASE WHEN k = 'text' THEN chorus_search_text(st) END \
                 FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], \
                 $5::uuid[], $6::text[], $7::bigint[], $8::text[], $9::text[], $10::uuid[], \
                 $11::text[], $12::text[], $13::uuid[], $14::text[], $15::boolean[], \
                 $16::text[]) AS v (i, c, conv, s, u, b, t, o, a, r, mn, k, tg, e, rm, st)",
            )
            .bind(new.iter().map(|m| m.message_id.0).collect::<Vec<_>>())
            .bind(
                new.iter()
                    .map(|m| m.client_msg_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|m| m.conversation_id.0).collect::<Vec<_>>())
            .bind(new.iter().map(|m| m.seq).collect::<Vec<_>>())
            .bind(new.iter().map(|m| m.sender_id.0).collect::<Vec<_>>())
            .bind(new.iter().map(|m| m.body.as_str()).collect::<Vec<_>>())
            .bind(new.iter().map(|m| millis(m.sent_at)).collect::<Vec<_>>())
            .bind(new.iter().map(|m| m.origin.as_str()).collect::<Vec<_>>())
            .bind(
                new.iter()
                    .map(|m| crate::attachments::to_column(&m.attachments))
                    .collect::<Vec<_>>(),
            )
            .bind(
                new.iter()
                    .map(|m| m.reply_to.map(|r| r.0))
                    .collect::<Vec<_>>(),
            )
            .bind(
                new.iter()
                    .map(|m| crate::mentions_to_column(&m.mentions))
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>())
            .bind(
                new.iter()
                    .map(|m| m.target_id.map(|t| t.0))
                    .collect::<Vec<_>>(),
            )
            .bind(new.iter().map(|m| m.emoji.as_deref()).collect::<Vec<_>>())
            .bind(new.iter().map(|m| m.remove).collect::<Vec<_>>())
            .bind(
                new.iter()
                    .map(|m| crate::search_text(m.conversation_id, &m.body))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
            let links: Vec<(&Message, &Attachment)> = new
                .iter()
                .flat_map(|m| m.attachments.iter().map(move |a| (*m, a)))
                .collect();
            if !links.is_empty() {
                sqlx::query(
                    "INSERT INTO message_attachments (attachment_id, message_id, conversation_id) \
                     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[]) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(
                    links
                        .iter()
                        .map(|(_, a)| a.attachment_id.0)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    links
                        .iter()
                        .map(|(m, _)| m.message_id.0)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    links
                        .iter()
                        .map(|(m, _)| m.conversation_id.0)
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *tx)
                .await?;
            }
            let mentioned: Vec<(&Message, &UserId)> = new
                .iter()
                .filter(|m| m.kind.is_text())
                .flat_map(|m| m.mentions.iter().map(move |u| (*m, u)))
                .collect();
            if !mentioned.is_empty() {
                sqlx::query(
                    "INSERT INTO message_mentions (user_id, conversation_id, seq) \
                     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[]) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(mentioned.iter().map(|(_, u)| u.0).collect::<Vec<_>>())
                .bind(
                    mentioned
                        .iter()
                        .map(|(m, _)| m.conversation_id.0)
                        .collect::<Vec<_>>(),
                )
                .bind(mentioned.iter().map(|(m, _)| m.seq).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE conversations c SET last_seq = v.last_seq \
                 FROM UNNEST($1::uuid[], $2::bigint[]) AS v (id, last_seq) WHERE c.id = v.id",
            )
            .bind(plan.last_seqs.iter().map(|(c, _)| c.0).collect::<Vec<_>>())
            .bind(
                plan.last_seqs
                    .iter()
                    .map(|(_, last)| *last)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
        }
        if plan.has_changes() {
            Self::write_changes(&mut tx, &plan).await?;
        }
        tx.commit().await?;
        Ok(plan.appended)
    }

    async fn direct_pair(&self, a: UserId, b: UserId) -> Result<(ConversationRecord, bool)> {
        let key = direct_key(a, b);
        let by_key =
            format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.direct_key = $1");
        if let Some(row) = sqlx::query(&by_key)
            .bind(&key)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok((Self::conversation_with_members(&row)?, false));
        }
        let id = ConversationId::new();
        let now = millis(Utc::now());
        let mut tx = self.pool.begin().await?;
        // A concurrent creator of the same pair makes this wait for its commit and then
        // insert nothing; its conversation, members included, is read back below.
        let inserted = sqlx::query(
            "INSERT INTO conversations (id, kind, direct_key, created_at) \
             VALUES ($1, 'direct', $2, $3) ON CONFLICT (direct_key) DO NOTHING",
        )
        .bind(id.0)
        .bind(&key)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            tx.rollback().await?;
            let row = sqlx::query(&by_key)
                .bind(&key)
                .fetch_one(&self.pool)
                .await?;
            return Ok((Self::conversation_with_members(&row)?, false));
        }
        Self::insert_member(&mut tx, id, a, now).await?;
        Self::insert_member(&mut tx, id, b, now).await?;
        tx.commit().await?;
        Ok((new_direct(id, a, b, now)?, true))
    }

    async fn find_conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>> {
        sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(Self::conversation_with_members)
        .transpose()
    }

    /// The GIN index of the messages' words finds the matches (their words carry
    /// their conversation's tag, so these are few), then those of `conversations`,
    /// newest first. PostgreSQL cannot estimate how few (it takes a prefix query to
    /// match about half the table) and, once the index's pending list is merged,
    /// chose to read the whole table (1.3 s at 1,000,000 messages against ~5 ms for the
    /// index scan): this query is told not to.
    async fn search_matching(
        &self,
        conversations: &[ConversationId],
        matching: String,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let sql = format!(
            "WITH hits AS MATERIALIZED (SELECT * FROM messages \
               WHERE search IS NOT NULL AND search @@ chorus_search_query($1)) \
             SELECT {} FROM hits m WHERE m.conversation_id = ANY($2) \
             ORDER BY m.sent_at DESC, m.seq DESC LIMIT $3",
            crate::backend::message_columns_of_m()
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(&sql)
            .bind(matching)
            .bind(conversations.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(Self::message_row).collect()
    }

    async fn conversations_with_markers(
        &self,
        user: UserId,
    ) -> Result<Vec<(ConversationRecord, i64)>> {
        sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS}, me.read_seq \
             FROM members me JOIN conversations c ON c.id = me.conversation_id \
             WHERE me.user_id = $1 ORDER BY c.created_at, c.id"
        ))
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                Self::conversation_with_members(row)?,
                row.try_get("read_seq")?,
            ))
        })
        .collect()
    }
}

crate::backend::impl_store!(PostgresStore);
crate::automation::impl_automation_store!(PostgresStore);
crate::jobs::impl_job_store!(PostgresStore);
crate::invites::impl_invite_store!(PostgresStore);
crate::attachments::impl_attachment_store!(PostgresStore);
