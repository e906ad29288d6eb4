//! PostgreSQL store: a connection pool shared by every node of a cluster.
//!
//! Unlike SQLite, several processes write at once: two store-stage instances may hold
//! the same conversation for a moment while the log moves a partition between them.
//! Sequence numbers stay contiguous because every batch locks the rows of its
//! conversations before it reads `last_seq` or looks for already stored messages.

use crate::{
    Account, Appended, ConversationRecord, NewMessage, Page, Result, Store, StoreError, direct_key,
    from_millis, millis,
};
use async_trait::async_trait;
use chorus_core::model::{ConversationKind, Message, Origin, User};
use chorus_core::{ConversationId, MessageId, UserId};
use chrono::Utc;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use uuid::Uuid;

mod automation;
mod invites;
mod jobs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per process; the server's `max_connections` bounds the cluster total.
const MAX_CONNECTIONS: u32 = 10;

/// How long a query waits for a free connection before the store reports itself
/// unavailable ([`StoreError::is_unavailable`]) instead of hanging.
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

fn user_row(row: &PgRow) -> Result<User> {
    Ok(User {
        id: UserId(row.try_get("id")?),
        username: row.try_get("username")?,
    })
}

const MESSAGE_COLUMNS: &str =
    "message_id, client_msg_id, conversation_id, seq, sender_id, body, sent_at, origin";

fn message_row(row: &PgRow) -> Result<Message> {
    let origin: &str = row.try_get("origin")?;
    Ok(Message {
        message_id: MessageId(row.try_get("message_id")?),
        client_msg_id: row.try_get("client_msg_id")?,
        conversation_id: ConversationId(row.try_get("conversation_id")?),
        seq: row.try_get("seq")?,
        sender_id: UserId(row.try_get("sender_id")?),
        body: row.try_get("body")?,
        sent_at: from_millis(row.try_get("sent_at")?)?,
        origin: Origin::parse(origin).ok_or_else(|| StoreError::Corrupt(origin.into()))?,
    })
}

/// A conversation with its members in joining order, read in one statement so that
/// the two agree.
const CONVERSATION_COLUMNS: &str = "c.id, c.kind, c.title, c.owner_id, c.last_seq, c.created_at, \
     ARRAY(SELECT m.user_id FROM members m WHERE m.conversation_id = c.id \
           ORDER BY m.joined_at, m.joined_order) AS members";

fn conversation_row(row: &PgRow) -> Result<ConversationRecord> {
    let kind: &str = row.try_get("kind")?;
    let owner: Option<Uuid> = row.try_get("owner_id")?;
    let members: Vec<Uuid> = row.try_get("members")?;
    Ok(ConversationRecord {
        id: ConversationId(row.try_get("id")?),
        kind: ConversationKind::parse(kind).ok_or_else(|| StoreError::Corrupt(kind.into()))?,
        title: row.try_get("title")?,
        owner_id: owner.map(UserId),
        members: members.into_iter().map(UserId).collect(),
        last_seq: row.try_get("last_seq")?,
        created_at: from_millis(row.try_get("created_at")?)?,
    })
}

/// Inserts a new user; `Conflict("username")` when the name is taken.
async fn insert_user<'e, E>(exec: E, username: &str, password_hash: &str, now: i64) -> Result<User>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let user = User {
        id: UserId::new(),
        username: username.to_owned(),
    };
    let res = sqlx::query(
        "INSERT INTO users (id, username, password_hash, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(user.id.0)
    .bind(username)
    .bind(password_hash)
    .bind(now)
    .execute(exec)
    .await;
    match res {
        Ok(_) => Ok(user),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::Conflict("username"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Takes the row lock of a conversation until the transaction ends. `NO KEY UPDATE`
/// (what an `UPDATE` of `last_seq` takes anyway) excludes other writers of the row but
/// not the key-share locks that inserting members and messages take on it.
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

#[async_trait]
impl Store for PostgresStore {
    async fn health(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> Result<User> {
        let _timer = crate::QueryTimer::start("create_user");
        insert_user(&self.pool, username, password_hash, millis(Utc::now())).await
    }

    async fn account(&self, username: &str) -> Result<Option<Account>> {
        let _timer = crate::QueryTimer::start("account");
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Account {
                user: user_row(&r)?,
                password_hash: r.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        let _timer = crate::QueryTimer::start("user");
        sqlx::query("SELECT id, username FROM users WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_row)
            .transpose()
    }

    async fn external_user(&self, issuer: &str, subject: &str) -> Result<Option<User>> {
        let _timer = crate::QueryTimer::start("external_user");
        sqlx::query(
            "SELECT u.id, u.username FROM identities i JOIN users u ON u.id = i.user_id \
             WHERE i.issuer = $1 AND i.subject = $2",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_row)
        .transpose()
    }

    async fn create_external_user(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
    ) -> Result<User> {
        let _timer = crate::QueryTimer::start("create_external_user");
        let now = millis(Utc::now());
        let mut tx = self.pool.begin().await?;
        let linked = sqlx::query("SELECT 1 FROM identities WHERE issuer = $1 AND subject = $2")
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&mut *tx)
            .await?;
        if linked.is_some() {
            return Err(StoreError::Conflict("identity"));
        }
        let user = insert_user(&mut *tx, username, "", now).await?;
        // Another gateway linking the same identity at the same moment: the primary key
        // makes one of them wait for the other and then fail here.
        let res = sqlx::query(
            "INSERT INTO identities (issuer, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(issuer)
        .bind(subject)
        .bind(user.id.0)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict("identity"));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(user)
    }

    async fn search_users(&self, prefix: &str, limit: i64) -> Result<Vec<User>> {
        // Range scan on the unique index instead of LIKE, which would treat `_` and `%`
        // in the prefix as wildcards; the column's "C" collation makes the range exact.
        let upper = format!("{prefix}\u{10FFFF}");
        sqlx::query(
            "SELECT id, username FROM users WHERE username >= $1 AND username < $2 \
             ORDER BY username LIMIT $3",
        )
        .bind(prefix)
        .bind(upper)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_row)
        .collect()
    }

    async fn create_group(
        &self,
        owner: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationRecord> {
        let id = ConversationId::new();
        let now = millis(Utc::now());
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO conversations (id, kind, title, owner_id, created_at) \
             VALUES ($1, 'group', $2, $3, $4)",
        )
        .bind(id.0)
        .bind(title)
        .bind(owner.0)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut all = vec![owner];
        for m in members {
            if !all.contains(m) {
                all.push(*m);
            }
        }
        for m in &all {
            insert_member(&mut tx, id, *m, now).await?;
        }
        tx.commit().await?;
        Ok(ConversationRecord {
            id,
            kind: ConversationKind::Group,
            title: Some(title.to_owned()),
            owner_id: Some(owner),
            members: all,
            last_seq: 0,
            created_at: from_millis(now)?,
        })
    }

    async fn direct(&self, a: UserId, b: UserId) -> Result<(ConversationRecord, bool)> {
        let key = direct_key(a, b);
        let by_key =
            format!("SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.direct_key = $1");
        if let Some(row) = sqlx::query(&by_key)
            .bind(&key)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok((conversation_row(&row)?, false));
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
            return Ok((conversation_row(&row)?, false));
        }
        insert_member(&mut tx, id, a, now).await?;
        insert_member(&mut tx, id, b, now).await?;
        tx.commit().await?;
        Ok((
            ConversationRecord {
                id,
                kind: ConversationKind::Direct,
                title: None,
                owner_id: None,
                members: vec![a, b],
                last_seq: 0,
                created_at: from_millis(now)?,
            },
            true,
        ))
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>> {
        sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(conversation_row)
        .transpose()
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<(ConversationRecord, i64)>> {
        let _timer = crate::QueryTimer::start("conversations_of");
        sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS}, me.read_seq \
             FROM members me JOIN conversations c ON c.id = me.conversation_id \
             WHERE me.user_id = $1 ORDER BY c.created_at, c.id"
        ))
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok((conversation_row(row)?, row.try_get("read_seq")?)))
        .collect()
    }

    async fn groups_owned(&self, user: UserId) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM conversations WHERE owner_id = $1 AND kind = 'group'",
        )
        .bind(user.0)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn read_seq(&self, conversation: ConversationId, user: UserId) -> Result<Option<i64>> {
        let _timer = crate::QueryTimer::start("read_seq");
        Ok(sqlx::query_scalar(
            "SELECT read_seq FROM members WHERE conversation_id = $1 AND user_id = $2",
        )
        .bind(conversation.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn add_member(&self, conversation: ConversationId, user: UserId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        insert_member(&mut tx, conversation, user, millis(Utc::now())).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_member(&self, conversation: ConversationId, user: UserId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // Removals of one conversation take turns: otherwise a departing owner could
        // hand the group to a member who is leaving at the same moment.
        lock_conversation(&mut tx, conversation).await?;
        let removed =
            sqlx::query("DELETE FROM members WHERE conversation_id = $1 AND user_id = $2")
                .bind(conversation.0)
                .bind(user.0)
                .execute(&mut *tx)
                .await?;
        if removed.rows_affected() == 0 {
            return Err(StoreError::NotFound("member"));
        }
        sqlx::query(
            "UPDATE conversations SET owner_id = \
               (SELECT user_id FROM members WHERE conversation_id = $1 \
                ORDER BY joined_at, joined_order LIMIT 1) \
             WHERE id = $1 AND owner_id = $2",
        )
        .bind(conversation.0)
        .bind(user.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
        let _timer = crate::QueryTimer::start("members");
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM members WHERE conversation_id = $1 \
             ORDER BY joined_at, joined_order",
        )
        .bind(conversation.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(UserId).collect())
    }

    async fn contacts(&self, user: UserId, through_direct: bool) -> Result<Vec<UserId>> {
        // A direct conversation has two members: the size bound covers it, and only
        // leaving direct conversations out needs their kind.
        let groups_only = if through_direct {
            ""
        } else {
            "JOIN conversations c ON c.id = m.conversation_id AND c.kind = 'group' "
        };
        let sql = format!(
            "SELECT DISTINCT o.user_id FROM members m {groups_only}\
             JOIN members o ON o.conversation_id = m.conversation_id \
             WHERE m.user_id = $1 AND o.user_id <> $1 \
             AND (SELECT count(*) FROM members n WHERE n.conversation_id = m.conversation_id) <= $2"
        );
        let ids: Vec<Uuid> = sqlx::query_scalar(&sql)
            .bind(user.0)
            .bind(crate::PRESENCE_MAX_GROUP)
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().map(UserId).collect())
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>> {
        let _timer = crate::QueryTimer::start("append_messages");
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conversations: Vec<Uuid> = batch.iter().map(|m| m.conversation_id.0).collect();
        conversations.sort_unstable();
        conversations.dedup();
        let message_ids: Vec<Uuid> = batch.iter().map(|m| m.message_id.0).collect();

        let mut tx = self.pool.begin().await?;
        // Locked in id order, so that two batches sharing conversations cannot deadlock.
        // Holding the locks, this transaction sees every message a previous holder
        // committed: the lookup below and the seqs after `last_seq` are then exact.
        let mut last_seq: HashMap<ConversationId, i64> = sqlx::query(
            "SELECT id, last_seq FROM conversations WHERE id = ANY($1) \
             ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&conversations)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((ConversationId(r.try_get("id")?), r.try_get("last_seq")?)))
        .collect::<Result<_>>()?;
        // Stored earlier, and (as the loop goes) stored by this batch: a duplicate
        // inside the batch is found too.
        let mut stored: HashMap<MessageId, Message> = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ANY($1)"
        ))
        .bind(&message_ids)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| message_row(r).map(|m| (m.message_id, m)))
        .collect::<Result<_>>()?;

        let mut out = Vec::with_capacity(batch.len());
        let mut advanced: BTreeMap<ConversationId, i64> = BTreeMap::new();
        for m in batch {
            if let Some(existing) = stored.get(&m.message_id) {
                out.push(Appended::Existing(existing.clone()));
                continue;
            }
            let Some(last) = last_seq.get_mut(&m.conversation_id) else {
                out.push(Appended::NoConversation);
                continue;
            };
            *last += 1;
            advanced.insert(m.conversation_id, *last);
            let message = Message {
                message_id: m.message_id,
                client_msg_id: m.client_msg_id.clone(),
                conversation_id: m.conversation_id,
                seq: *last,
                sender_id: m.sender_id,
                body: m.body.clone(),
                sent_at: from_millis(millis(m.sent_at))?,
                origin: m.origin,
            };
            stored.insert(m.message_id, message.clone());
            out.push(Appended::New(message));
        }

        let new: Vec<&Message> = out.iter().filter_map(Appended::as_new).collect();
        if !new.is_empty() {
            // One statement for the whole batch: arrays of columns, zipped by UNNEST.
            sqlx::query(
                "INSERT INTO messages (message_id, client_msg_id, conversation_id, seq, \
                 sender_id, body, sent_at, origin) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], \
                 $5::uuid[], $6::text[], $7::bigint[], $8::text[])",
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
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE conversations c SET last_seq = v.last_seq \
                 FROM UNNEST($1::uuid[], $2::bigint[]) AS v (id, last_seq) WHERE c.id = v.id",
            )
            .bind(advanced.keys().map(|c| c.0).collect::<Vec<_>>())
            .bind(advanced.values().copied().collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>> {
        let _timer = crate::QueryTimer::start("message");
        sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(message_row)
        .transpose()
    }

    async fn messages(&self, conversation: ConversationId, page: Page) -> Result<Vec<Message>> {
        let _timer = crate::QueryTimer::start("messages");
        let before = page.before_seq.unwrap_or(i64::MAX);
        let rows = match page.after_seq {
            Some(after) => {
                sqlx::query(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages \
                     WHERE conversation_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq LIMIT $4"
                ))
                .bind(conversation.0)
                .bind(after)
                .bind(before)
                .bind(page.limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                let mut rows = sqlx::query(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages \
                     WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                ))
                .bind(conversation.0)
                .bind(before)
                .bind(page.limit)
                .fetch_all(&self.pool)
                .await?;
                rows.reverse();
                rows
            }
        };
        rows.iter().map(message_row).collect()
    }

    async fn mark_read(&self, conversation: ConversationId, user: UserId, seq: i64) -> Result<i64> {
        let _timer = crate::QueryTimer::start("mark_read");
        let marker: Option<i64> = sqlx::query_scalar(
            "UPDATE members SET read_seq = GREATEST(read_seq, \
               LEAST($1, (SELECT last_seq FROM conversations WHERE id = $2))) \
             WHERE conversation_id = $2 AND user_id = $3 RETURNING read_seq",
        )
        .bind(seq)
        .bind(conversation.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?;
        marker.ok_or(StoreError::NotFound("member"))
    }

    async fn last_seqs(&self, user: UserId) -> Result<Vec<(ConversationId, i64)>> {
        let _timer = crate::QueryTimer::start("last_seqs");
        sqlx::query(
            "SELECT c.id, c.last_seq FROM members m JOIN conversations c \
             ON c.id = m.conversation_id WHERE m.user_id = $1",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((ConversationId(r.try_get(0)?), r.try_get(1)?)))
        .collect()
    }
}

async fn insert_member(
    tx: &mut Transaction<'_, Postgres>,
    conversation: ConversationId,
    user: UserId,
    now: i64,
) -> Result<()> {
    let res = sqlx::query(
        "INSERT INTO members (conversation_id, user_id, joined_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(conversation.0)
    .bind(user.0)
    .bind(now)
    .execute(&mut **tx)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(StoreError::NotFound("user"))
        }
        Err(e) => Err(e.into()),
    }
}
