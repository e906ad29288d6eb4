//! The store code both backends share, and the few things in which they differ.
//!
//! SQLite and PostgreSQL have the same tables (see `migrations/`) and agree on most of
//! the SQL: sqlx binds `$1`, `$2`, … by position on SQLite too (a test in
//! [`crate::sqlite`] checks it), so one statement text serves both. What differs is
//! what a [`Backend`] says:
//!
//! - how an id is stored: as TEXT holding its hyphenated form on SQLite, as UUID on
//!   PostgreSQL ([`Backend::id`], [`Backend::get_id`]);
//! - a few words of SQL, and row locks, which PostgreSQL takes and SQLite, whose
//!   writer holds the database's one write lock, needs not;
//! - where statements run: SQLite reads on a pool of readers and writes on its one
//!   writer connection, PostgreSQL has one pool for both;
//! - appending messages and reading conversations with their members, which each does
//!   in the way that is fastest on it.
//!
//! Times are integer milliseconds on both, and a `bool` is bound and read as SQLite's
//! INTEGER 0 or 1 and as PostgreSQL's BOOLEAN alike.
//!
//! The shared code is in the macros [`impl_store`] (here), `impl_automation_store`,
//! `impl_job_store` and `impl_invite_store`: each emits the impl of one store trait for
//! a type implementing [`Backend`], from one text. A macro rather than an impl generic
//! over the database, because generic sqlx code has to bound, on every function, each
//! type it binds or reads and the executors it runs on; each expansion of a macro is
//! plain code, type-checked against one backend.

use crate::{Appended, ConversationRecord, NewMessage, Result, from_millis};
use chorus_core::model::{ConversationKind, Message};
use chorus_core::{ConversationId, UserId};
use sqlx::{Database, Pool, Transaction};
use uuid::Uuid;

/// A row of a backend.
pub(crate) type Row<B> = <<B as Backend>::Db as Database>::Row;

/// A statement of a backend, with its parameters.
pub(crate) type Query<'q, B> =
    sqlx::query::Query<'q, <B as Backend>::Db, <<B as Backend>::Db as Database>::Arguments<'q>>;

/// A transaction of a backend.
pub(crate) type Tx<'c, B> = Transaction<'c, <B as Backend>::Db>;

/// What the shared store code asks of a backend; see the module docs.
pub(crate) trait Backend: Send + Sync {
    /// The database.
    type Db: Database;
    /// An id as bound to a statement.
    type Id;

    /// The column that orders members who joined in the same millisecond.
    const JOINED_ORDER: &'static str;
    /// The SQL function of the greater of two values.
    const GREATEST: &'static str;
    /// The SQL function of the lesser of two values.
    const LEAST: &'static str;
    /// What ends a `SELECT` of rows that the transaction is about to update, so that
    /// it holds them until it ends.
    const FOR_UPDATE: &'static str;
    /// Sets the searchable text of the message `$2` to `$1` (its latest edit), in the
    /// edit's transaction (`None`: the index follows the entries on its own).
    const SEARCH_EDIT: Option<&'static str>;
    /// Takes the message `$1` out of search (it is deleted), in the delete's
    /// transaction (`None`: as [`Backend::SEARCH_EDIT`]).
    const SEARCH_ERASE: Option<&'static str>;

    /// The full-text query's "or" and "and".
    const SEARCH_OR: &'static str;
    const SEARCH_AND: &'static str;
    /// The full-text query's term for words starting with `tagged_word`.
    fn search_prefix(tagged_word: &str) -> String;

    /// The full-text query for messages with every one of `words` in one of the
    /// conversations tagged `tags` (see [`crate::search_text`]).
    fn search_match(tags: &[String], words: &[String]) -> String {
        words
            .iter()
            .map(|w| {
                let any: Vec<String> = tags
                    .iter()
                    .map(|t| Self::search_prefix(&format!("{t}{w}")))
                    .collect();
                format!("({})", any.join(Self::SEARCH_OR))
            })
            .collect::<Vec<_>>()
            .join(Self::SEARCH_AND)
    }

    /// An id to bind.
    fn id(id: Uuid) -> Self::Id;
    /// The id in `column` of `row`.
    fn get_id(row: &Row<Self>, column: &str) -> Result<Uuid>;
    /// The id, or NULL, in `column` of `row`.
    fn get_opt_id(row: &Row<Self>, column: &str) -> Result<Option<Uuid>>;

    /// Where reads run.
    fn reader(&self) -> &Pool<Self::Db>;
    /// Where writes outside a transaction run.
    fn writer(&self) -> &Pool<Self::Db>;
    /// A write transaction.
    async fn write(&self) -> Result<Tx<'static, Self>>;
    /// Makes the writers of one conversation's members and owner take turns until `tx`
    /// ends.
    async fn lock_conversation(tx: &mut Tx<'_, Self>, conversation: ConversationId) -> Result<()>;

    /// [`crate::Store::append_messages`] of a batch that is not empty.
    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<Appended>>;
    /// [`crate::Store::direct`].
    async fn direct_pair(&self, a: UserId, b: UserId) -> Result<(ConversationRecord, bool)>;
    /// [`crate::Store::conversation`].
    async fn find_conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>>;
    /// [`crate::Store::conversations_of`].
    async fn conversations_with_markers(
        &self,
        user: UserId,
    ) -> Result<Vec<(ConversationRecord, i64)>>;
    /// Waits, if the backend must, until a search sees every message stored before it.
    async fn search_ready(&self) -> Result<()> {
        Ok(())
    }
    /// At most `limit` messages of `conversations` (the caller's, read once by
    /// [`crate::Store::search`]) matching `matching` (a [`Backend::search_match`]),
    /// newest first, as stored (their first body). Only those conversations: another
    /// with the same tag must not show.
    async fn search_matching(
        &self,
        conversations: &[ConversationId],
        matching: String,
        limit: i64,
    ) -> Result<Vec<Message>>;
}

/// The direct conversation of `a` and `b` just created at `now` (milliseconds).
pub(crate) fn new_direct(
    id: ConversationId,
    a: UserId,
    b: UserId,
    now: i64,
) -> Result<ConversationRecord> {
    Ok(ConversationRecord {
        id,
        kind: ConversationKind::Direct,
        title: None,
        owner_id: None,
        members: vec![a, b],
        last_seq: 0,
        created_at: from_millis(now)?,
    })
}

/// The columns of a new entry, in the order they are inserted.
pub(crate) const NEW_MESSAGE_COLUMNS: &str = "message_id, client_msg_id, conversation_id, seq, sender_id, body, sent_at, origin, \
     attachments, reply_to, mentions, kind, target_id, emoji, remove";

/// The columns of a stored entry, of the messages table named `m`.
pub(crate) fn message_columns_of_m() -> String {
    MESSAGE_COLUMNS
        .split(", ")
        .map(|c| format!("m.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns of a stored entry.
pub(crate) const MESSAGE_COLUMNS: &str = "message_id, client_msg_id, conversation_id, seq, sender_id, body, sent_at, origin, \
     attachments, reply_to, mentions, kind, target_id, emoji, remove, deleted, edited_at";

/// Emits `impl Store for $store` and the row mapping and helpers it shares with the
/// backend's own code (`user_row`, `message_row`, `conversation_row`, `insert_user`,
/// `insert_member`, `members_in`), for a `$store` implementing [`Backend`].
macro_rules! impl_store {
    ($store:ty) => {
        const _: () = {
            use $crate::backend::{Backend, MESSAGE_COLUMNS, Row, Tx};
            use $crate::{
                Account, AfterMarker, Appended, ConversationRecord, NewMessage, Page, QueryTimer,
                Result, SearchQuery, Store, StoreError, from_millis, millis,
            };
            use ::chorus_core::model::{ConversationKind, Message, MessageKind, Origin, User};
            use ::chorus_core::{ConversationId, MessageId, UserId};
            use ::chrono::Utc;
            use ::sqlx::Row as _;

            impl $store {
                fn user_row(row: &Row<Self>) -> Result<User> {
                    Ok(User {
                        id: UserId(Self::get_id(row, "id")?),
                        username: row.try_get("username")?,
                    })
                }

                fn message_row(row: &Row<Self>) -> Result<Message> {
                    let origin: &str = row.try_get("origin")?;
                    let kind: &str = row.try_get("kind")?;
                    Ok(Message {
                        message_id: MessageId(Self::get_id(row, "message_id")?),
                        client_msg_id: row.try_get("client_msg_id")?,
                        conversation_id: ConversationId(Self::get_id(row, "conversation_id")?),
                        seq: row.try_get("seq")?,
                        sender_id: UserId(Self::get_id(row, "sender_id")?),
                        body: row.try_get("body")?,
                        sent_at: from_millis(row.try_get("sent_at")?)?,
                        origin: Origin::parse(origin)
                            .ok_or_else(|| StoreError::Corrupt(origin.into()))?,
                        attachments: $crate::attachments::from_column(
                            row.try_get("attachments")?,
                        )?,
                        reply_to: Self::get_opt_id(row, "reply_to")?.map(MessageId),
                        mentions: $crate::mentions_from_column(row.try_get("mentions")?)?,
                        kind: MessageKind::parse(kind)
                            .ok_or_else(|| StoreError::Corrupt(kind.into()))?,
                        target_id: Self::get_opt_id(row, "target_id")?.map(MessageId),
                        emoji: row.try_get("emoji")?,
                        remove: row.try_get("remove")?,
                        deleted: row.try_get("deleted")?,
                        edited_at: row
                            .try_get::<Option<i64>, _>("edited_at")?
                            .map(from_millis)
                            .transpose()?,
                    })
                }

                /// Writes what the changes of an appended batch do to the messages they
                /// target, after its entries are inserted; see the crate docs.
                async fn write_changes(
                    conn: &mut <<Self as Backend>::Db as ::sqlx::Database>::Connection,
                    plan: &$crate::append::AppendPlan,
                ) -> Result<()> {
                    for edit in &plan.edits {
                        ::sqlx::query("UPDATE messages SET edited_at = $1 WHERE message_id = $2")
                            .bind(millis(edit.at))
                            .bind(Self::id(edit.target.0))
                            .execute(&mut *conn)
                            .await?;
                        if let Some(sql) = Self::SEARCH_EDIT {
                            ::sqlx::query(sql)
                                .bind($crate::search_text(edit.conversation_id, &edit.body))
                                .bind(Self::id(edit.target.0))
                                .execute(&mut *conn)
                                .await?;
                        }
                        ::sqlx::query(
                            "DELETE FROM message_mentions WHERE conversation_id = $1 AND seq = $2",
                        )
                        .bind(Self::id(edit.conversation_id.0))
                        .bind(edit.seq)
                        .execute(&mut *conn)
                        .await?;
                        for user in &edit.mentions {
                            ::sqlx::query(
                                "INSERT INTO message_mentions (user_id, conversation_id, seq) \
                                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                            )
                            .bind(Self::id(user.0))
                            .bind(Self::id(edit.conversation_id.0))
                            .bind(edit.seq)
                            .execute(&mut *conn)
                            .await?;
                        }
                    }
                    for deleted in &plan.deletes {
                        let target = Self::id(deleted.target.0);
                        if let Some(sql) = Self::SEARCH_ERASE {
                            ::sqlx::query(sql)
                                .bind(Self::id(deleted.target.0))
                                .execute(&mut *conn)
                                .await?;
                        }
                        // Gone from the message, from its edits, from the files it
                        // carried (which the sweep then frees if nothing else carries
                        // them) and from the mentions counted.
                        ::sqlx::query(
                            "UPDATE messages SET body = '', attachments = NULL, mentions = NULL, \
                             deleted = $1 WHERE message_id = $2",
                        )
                        .bind(true)
                        .bind(target)
                        .execute(&mut *conn)
                        .await?;
                        ::sqlx::query(
                            "UPDATE messages SET body = '', mentions = NULL \
                             WHERE target_id = $1 AND kind = 'edit'",
                        )
                        .bind(Self::id(deleted.target.0))
                        .execute(&mut *conn)
                        .await?;
                        ::sqlx::query("DELETE FROM message_attachments WHERE message_id = $1")
                            .bind(Self::id(deleted.target.0))
                            .execute(&mut *conn)
                            .await?;
                        ::sqlx::query(
                            "DELETE FROM message_mentions WHERE conversation_id = $1 AND seq = $2",
                        )
                        .bind(Self::id(deleted.conversation_id.0))
                        .bind(deleted.seq)
                        .execute(&mut *conn)
                        .await?;
                    }
                    for (target, user, emoji) in &plan.reactions_added {
                        ::sqlx::query(
                            "INSERT INTO reactions (target_id, user_id, emoji) VALUES ($1, $2, $3) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(Self::id(target.0))
                        .bind(Self::id(user.0))
                        .bind(emoji)
                        .execute(&mut *conn)
                        .await?;
                    }
                    for (target, user, emoji) in &plan.reactions_removed {
                        ::sqlx::query(
                            "DELETE FROM reactions WHERE target_id = $1 AND user_id = $2 \
                             AND emoji = $3",
                        )
                        .bind(Self::id(target.0))
                        .bind(Self::id(user.0))
                        .bind(emoji)
                        .execute(&mut *conn)
                        .await?;
                    }
                    Ok(())
                }

                /// A page of a conversation's messages, of those answering `reply_to`
                /// only if it is given; see [`Store::messages`].
                async fn page_of(
                    &self,
                    conversation: ConversationId,
                    reply_to: Option<MessageId>,
                    page: Page,
                ) -> Result<Vec<Message>> {
                    let before = page.before_seq.unwrap_or(i64::MAX);
                    // `$3` is either bound to the message answered or unused; the
                    // partial index `messages_replies` serves the filtered pages.
                    let answering = if reply_to.is_some() {
                        " AND reply_to = $3"
                    } else {
                        ""
                    };
                    let (range, order) = match page.after_seq {
                        Some(_) => ("seq > $4 AND seq < $2", "seq"),
                        None => ("seq < $2", "seq DESC"),
                    };
                    let sql = format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages \
                         WHERE conversation_id = $1 AND {range}{answering} \
                         ORDER BY {order} LIMIT $5"
                    );
                    let mut rows = ::sqlx::query(&sql)
                        .bind(Self::id(conversation.0))
                        .bind(before)
                        .bind(reply_to.map(|m| Self::id(m.0)))
                        .bind(page.after_seq.unwrap_or(0))
                        .bind(page.limit)
                        .fetch_all(self.reader())
                        .await?;
                    if page.after_seq.is_none() {
                        rows.reverse();
                    }
                    rows.iter().map(Self::message_row).collect()
                }

                /// A conversation from a row of `id, kind, title, owner_id, last_seq,
                /// created_at`, with its members.
                fn conversation_row(
                    row: &Row<Self>,
                    members: Vec<UserId>,
                ) -> Result<ConversationRecord> {
                    let kind: &str = row.try_get("kind")?;
                    Ok(ConversationRecord {
                        id: ConversationId(Self::get_id(row, "id")?),
                        kind: ConversationKind::parse(kind)
                            .ok_or_else(|| StoreError::Corrupt(kind.into()))?,
                        title: row.try_get("title")?,
                        owner_id: Self::get_opt_id(row, "owner_id")?.map(UserId),
                        members,
                        last_seq: row.try_get("last_seq")?,
                        created_at: from_millis(row.try_get("created_at")?)?,
                    })
                }

                /// Inserts a new user; `Conflict("username")` when the name is taken.
                async fn insert_user<'e, E>(
                    exec: E,
                    username: &str,
                    password_hash: &str,
                    now: i64,
                ) -> Result<User>
                where
                    E: ::sqlx::Executor<'e, Database = <Self as Backend>::Db>,
                {
                    let user = User {
                        id: UserId::new(),
                        username: username.to_owned(),
                    };
                    let res = ::sqlx::query(
                        "INSERT INTO users (id, username, password_hash, created_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(Self::id(user.id.0))
                    .bind(username)
                    .bind(password_hash)
                    .bind(now)
                    .execute(exec)
                    .await;
                    match res {
                        Ok(_) => Ok(user),
                        Err(::sqlx::Error::Database(e)) if e.is_unique_violation() => {
                            Err(StoreError::Conflict("username"))
                        }
                        Err(e) => Err(e.into()),
                    }
                }

                async fn insert_member(
                    tx: &mut Tx<'_, Self>,
                    conversation: ConversationId,
                    user: UserId,
                    now: i64,
                ) -> Result<()> {
                    let res = ::sqlx::query(
                        "INSERT INTO members (conversation_id, user_id, joined_at) \
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(Self::id(conversation.0))
                    .bind(Self::id(user.0))
                    .bind(now)
                    .execute(&mut **tx)
                    .await;
                    match res {
                        Ok(_) => Ok(()),
                        Err(::sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                            Err(StoreError::NotFound("user"))
                        }
                        Err(e) => Err(e.into()),
                    }
                }

                /// The members of `conversation` in joining order.
                async fn members_in<'e, E>(
                    exec: E,
                    conversation: ConversationId,
                ) -> Result<Vec<UserId>>
                where
                    E: ::sqlx::Executor<'e, Database = <Self as Backend>::Db>,
                {
                    let sql = format!(
                        "SELECT user_id FROM members WHERE conversation_id = $1 \
                         ORDER BY joined_at, {}",
                        Self::JOINED_ORDER
                    );
                    ::sqlx::query(&sql)
                        .bind(Self::id(conversation.0))
                        .fetch_all(exec)
                        .await?
                        .iter()
                        .map(|r| Ok(UserId(Self::get_id(r, "user_id")?)))
                        .collect()
                }
            }

            #[::async_trait::async_trait]
            impl Store for $store {
                async fn health(&self) -> Result<()> {
                    ::sqlx::query("SELECT 1").execute(self.reader()).await?;
                    Ok(())
                }

                async fn create_user(&self, username: &str, password_hash: &str) -> Result<User> {
                    let _timer = QueryTimer::start("create_user");
                    Self::insert_user(self.writer(), username, password_hash, millis(Utc::now()))
                        .await
                }

                async fn account(&self, username: &str) -> Result<Option<Account>> {
                    let _timer = QueryTimer::start("account");
                    let row = ::sqlx::query(
                        "SELECT id, username, password_hash FROM users WHERE username = $1",
                    )
                    .bind(username)
                    .fetch_optional(self.reader())
                    .await?;
                    row.map(|r| {
                        Ok(Account {
                            user: Self::user_row(&r)?,
                            password_hash: r.try_get("password_hash")?,
                        })
                    })
                    .transpose()
                }

                async fn user(&self, id: UserId) -> Result<Option<User>> {
                    let _timer = QueryTimer::start("user");
                    ::sqlx::query("SELECT id, username FROM users WHERE id = $1")
                        .bind(Self::id(id.0))
                        .fetch_optional(self.reader())
                        .await?
                        .as_ref()
                        .map(Self::user_row)
                        .transpose()
                }

                async fn external_user(&self, issuer: &str, subject: &str) -> Result<Option<User>> {
                    let _timer = QueryTimer::start("external_user");
                    ::sqlx::query(
                        "SELECT u.id, u.username FROM identities i JOIN users u ON u.id = i.user_id \
                         WHERE i.issuer = $1 AND i.subject = $2",
                    )
                    .bind(issuer)
                    .bind(subject)
                    .fetch_optional(self.reader())
                    .await?
                    .as_ref()
                    .map(Self::user_row)
                    .transpose()
                }

                async fn create_external_user(
                    &self,
                    issuer: &str,
                    subject: &str,
                    username: &str,
                ) -> Result<User> {
                    let _timer = QueryTimer::start("create_external_user");
                    let now = millis(Utc::now());
                    let mut tx = self.write().await?;
                    let linked =
                        ::sqlx::query("SELECT 1 FROM identities WHERE issuer = $1 AND subject = $2")
                            .bind(issuer)
                            .bind(subject)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if linked.is_some() {
                        return Err(StoreError::Conflict("identity"));
                    }
                    let user = Self::insert_user(&mut *tx, username, "", now).await?;
                    // Another gateway linking the same identity at the same moment (on
                    // PostgreSQL; SQLite's writers take turns): the primary key makes one
                    // of them wait for the other and then fail here.
                    let res = ::sqlx::query(
                        "INSERT INTO identities (issuer, subject, user_id, created_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(issuer)
                    .bind(subject)
                    .bind(Self::id(user.id.0))
                    .bind(now)
                    .execute(&mut *tx)
                    .await;
                    match res {
                        Ok(_) => {}
                        Err(::sqlx::Error::Database(e)) if e.is_unique_violation() => {
                            return Err(StoreError::Conflict("identity"));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    tx.commit().await?;
                    Ok(user)
                }

                async fn search_users(&self, prefix: &str, limit: i64) -> Result<Vec<User>> {
                    // Range scan on the unique index instead of LIKE, which would treat `_`
                    // and `%` in the prefix as wildcards; the column's byte order (SQLite's
                    // BINARY, PostgreSQL's "C" collation) makes the range exact.
                    let upper = format!("{prefix}\u{10FFFF}");
                    ::sqlx::query(
                        "SELECT id, username FROM users WHERE username >= $1 AND username < $2 \
                         ORDER BY username LIMIT $3",
                    )
                    .bind(prefix)
                    .bind(upper)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(Self::user_row)
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
                    let mut tx = self.write().await?;
                    ::sqlx::query(
                        "INSERT INTO conversations (id, kind, title, owner_id, created_at) \
                         VALUES ($1, 'group', $2, $3, $4)",
                    )
                    .bind(Self::id(id.0))
                    .bind(title)
                    .bind(Self::id(owner.0))
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
                        Self::insert_member(&mut tx, id, *m, now).await?;
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

                async fn groups_owned(&self, user: UserId) -> Result<i64> {
                    Ok(::sqlx::query_scalar(
                        "SELECT count(*) FROM conversations WHERE owner_id = $1 AND kind = 'group'",
                    )
                    .bind(Self::id(user.0))
                    .fetch_one(self.reader())
                    .await?)
                }

                async fn direct(&self, a: UserId, b: UserId) -> Result<(ConversationRecord, bool)> {
                    self.direct_pair(a, b).await
                }

                async fn conversation(
                    &self,
                    id: ConversationId,
                ) -> Result<Option<ConversationRecord>> {
                    self.find_conversation(id).await
                }

                async fn conversations_of(
                    &self,
                    user: UserId,
                ) -> Result<Vec<(ConversationRecord, i64)>> {
                    let _timer = QueryTimer::start("conversations_of");
                    self.conversations_with_markers(user).await
                }

                async fn read_seq(
                    &self,
                    conversation: ConversationId,
                    user: UserId,
                ) -> Result<Option<i64>> {
                    let _timer = QueryTimer::start("read_seq");
                    Ok(::sqlx::query_scalar(
                        "SELECT read_seq FROM members WHERE conversation_id = $1 AND user_id = $2",
                    )
                    .bind(Self::id(conversation.0))
                    .bind(Self::id(user.0))
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn add_member(&self, conversation: ConversationId, user: UserId) -> Result<()> {
                    let mut tx = self.write().await?;
                    Self::insert_member(&mut tx, conversation, user, millis(Utc::now())).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn remove_member(
                    &self,
                    conversation: ConversationId,
                    user: UserId,
                ) -> Result<()> {
                    let mut tx = self.write().await?;
                    // Removals of one conversation take turns: otherwise a departing owner
                    // could hand the group to a member who is leaving at the same moment.
                    Self::lock_conversation(&mut tx, conversation).await?;
                    let removed = ::sqlx::query(
                        "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2",
                    )
                    .bind(Self::id(conversation.0))
                    .bind(Self::id(user.0))
                    .execute(&mut *tx)
                    .await?;
                    if removed.rows_affected() == 0 {
                        return Err(StoreError::NotFound("member"));
                    }
                    let hand_over = format!(
                        "UPDATE conversations SET owner_id = \
                           (SELECT user_id FROM members WHERE conversation_id = $1 \
                            ORDER BY joined_at, {} LIMIT 1) \
                         WHERE id = $1 AND owner_id = $2",
                        Self::JOINED_ORDER
                    );
                    ::sqlx::query(&hand_over)
                        .bind(Self::id(conversation.0))
                        .bind(Self::id(user.0))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
                    let _timer = QueryTimer::start("members");
                    Self::members_in(self.reader(), conversation).await
                }

                async fn contacts(&self, user: UserId, through_direct: bool) -> Result<Vec<UserId>> {
                    // A direct conversation has two members: the size bound covers it, and
                    // only leaving direct conversations out needs their kind.
                    let groups_only = if through_direct {
                        ""
                    } else {
                        "JOIN conversations c ON c.id = m.conversation_id AND c.kind = 'group' "
                    };
                    let sql = format!(
                        "SELECT DISTINCT o.user_id FROM members m {groups_only}\
                         JOIN members o ON o.conversation_id = m.conversation_id \
                         WHERE m.user_id = $1 AND o.user_id <> $1 \
                         AND (SELECT count(*) FROM members n \
                              WHERE n.conversation_id = m.conversation_id) <= $2"
                    );
                    ::sqlx::query(&sql)
                        .bind(Self::id(user.0))
                        .bind($crate::PRESENCE_MAX_GROUP)
                        .fetch_all(self.reader())
                        .await?
                        .iter()
                        .map(|r| Ok(UserId(Self::get_id(r, "user_id")?)))
                        .collect()
                }

                async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>> {
                    let _timer = QueryTimer::start("append_messages");
                    if batch.is_empty() {
                        return Ok(Vec::new());
                    }
                    self.append(batch).await
                }

                async fn message(&self, id: MessageId) -> Result<Option<Message>> {
                    let _timer = QueryTimer::start("message");
                    ::sqlx::query(&format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = $1"
                    ))
                    .bind(Self::id(id.0))
                    .fetch_optional(self.reader())
                    .await?
                    .as_ref()
                    .map(Self::message_row)
                    .transpose()
                }

                async fn messages(
                    &self,
                    conversation: ConversationId,
                    page: Page,
                ) -> Result<Vec<Message>> {
                    let _timer = QueryTimer::start("messages");
                    self.page_of(conversation, None, page).await
                }

                async fn replies(
                    &self,
                    conversation: ConversationId,
                    message: MessageId,
                    page: Page,
                ) -> Result<Vec<Message>> {
                    let _timer = QueryTimer::start("replies");
                    self.page_of(conversation, Some(message), page).await
                }

                async fn mark_read(
                    &self,
                    conversation: ConversationId,
                    user: UserId,
                    seq: i64,
                ) -> Result<i64> {
                    let _timer = QueryTimer::start("mark_read");
                    let sql = format!(
                        "UPDATE members SET read_seq = {}(read_seq, \
                           {}($1, (SELECT last_seq FROM conversations WHERE id = $2))) \
                         WHERE conversation_id = $2 AND user_id = $3 RETURNING read_seq",
                        Self::GREATEST,
                        Self::LEAST
                    );
                    let marker: Option<i64> = ::sqlx::query_scalar(&sql)
                        .bind(seq)
                        .bind(Self::id(conversation.0))
                        .bind(Self::id(user.0))
                        .fetch_optional(self.writer())
                        .await?;
                    marker.ok_or(StoreError::NotFound("member"))
                }

                async fn last_seqs(&self, user: UserId) -> Result<Vec<(ConversationId, i64)>> {
                    let _timer = QueryTimer::start("last_seqs");
                    ::sqlx::query(
                        "SELECT c.id, c.last_seq FROM members m JOIN conversations c \
                         ON c.id = m.conversation_id WHERE m.user_id = $1",
                    )
                    .bind(Self::id(user.0))
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(|r| Ok((ConversationId(Self::get_id(r, "id")?), r.try_get("last_seq")?)))
                    .collect()
                }

                async fn users_named(&self, names: &[&str]) -> Result<Vec<User>> {
                    let _timer = QueryTimer::start("users_named");
                    // A few names a batch, most batches none: one lookup each, by the
                    // unique index on `username`.
                    let mut users = Vec::with_capacity(names.len());
                    for name in names {
                        let row = ::sqlx::query("SELECT id, username FROM users WHERE username = $1")
                            .bind(*name)
                            .fetch_optional(self.reader())
                            .await?;
                        if let Some(row) = row {
                            users.push(Self::user_row(&row)?);
                        }
                    }
                    Ok(users)
                }

                async fn after_marker(
                    &self,
                    user: UserId,
                ) -> Result<::std::collections::HashMap<ConversationId, AfterMarker>> {
                    let _timer = QueryTimer::start("after_marker");
                    let mut after: ::std::collections::HashMap<ConversationId, AfterMarker> =
                        ::std::collections::HashMap::new();
                    // Both from partial indexes that hold only the few entries counted.
                    let not_messages = ::sqlx::query(
                        "SELECT e.conversation_id, COUNT(*) AS n FROM members m \
                         JOIN messages e ON e.conversation_id = m.conversation_id \
                         AND e.seq > m.read_seq AND (e.kind <> 'text' OR e.deleted) \
                         WHERE m.user_id = $1 GROUP BY e.conversation_id",
                    )
                    .bind(Self::id(user.0))
                    .fetch_all(self.reader())
                    .await?;
                    for r in &not_messages {
                        after
                            .entry(ConversationId(Self::get_id(r, "conversation_id")?))
                            .or_default()
                            .not_messages = r.try_get("n")?;
                    }
                    let mentions = ::sqlx::query(
                        "SELECT mm.conversation_id, COUNT(*) AS n FROM message_mentions mm \
                         JOIN members m ON m.conversation_id = mm.conversation_id \
                         AND m.user_id = mm.user_id \
                         WHERE mm.user_id = $1 AND mm.seq > m.read_seq \
                         GROUP BY mm.conversation_id",
                    )
                    .bind(Self::id(user.0))
                    .fetch_all(self.reader())
                    .await?;
                    for r in &mentions {
                        after
                            .entry(ConversationId(Self::get_id(r, "conversation_id")?))
                            .or_default()
                            .mentions = r.try_get("n")?;
                    }
                    Ok(after)
                }

                async fn reacted(
                    &self,
                    target: MessageId,
                    user: UserId,
                    emoji: &str,
                ) -> Result<bool> {
                    let _timer = QueryTimer::start("reacted");
                    Ok(::sqlx::query(
                        "SELECT 1 FROM reactions WHERE target_id = $1 AND user_id = $2 \
                         AND emoji = $3",
                    )
                    .bind(Self::id(target.0))
                    .bind(Self::id(user.0))
                    .bind(emoji)
                    .fetch_optional(self.reader())
                    .await?
                    .is_some())
                }

                async fn search(&self, user: UserId, query: &SearchQuery) -> Result<Vec<Message>> {
                    let _timer = QueryTimer::start("search");
                    self.search_ready().await?;
                    let conversations: Vec<ConversationId> = match query.conversation {
                        Some(c) => vec![c],
                        None => ::sqlx::query("SELECT conversation_id FROM members WHERE user_id = $1")
                            .bind(Self::id(user.0))
                            .fetch_all(self.reader())
                            .await?
                            .iter()
                            .map(|r| Ok(ConversationId(Self::get_id(r, "conversation_id")?)))
                            .collect::<Result<_>>()?,
                    };
                    let mut found: Vec<Message> = Vec::new();
                    for slice in conversations.chunks($crate::SEARCHED_CONVERSATIONS) {
                        let tags: Vec<String> =
                            slice.iter().map(|c| $crate::conversation_tag(*c)).collect();
                        let matching = Self::search_match(&tags, &query.words);
                        found.extend(
                            self.search_matching(slice, matching, query.limit)
                                .await?,
                        );
                    }
                    found.sort_unstable_by(|a, b| (b.sent_at, b.seq).cmp(&(a.sent_at, a.seq)));
                    found.truncate(usize::try_from(query.limit).unwrap_or(0));
                    // An edited message shows its latest edit's body, as it matched.
                    for m in found.iter_mut().filter(|m| m.edited_at.is_some()) {
                        let latest: Option<String> = ::sqlx::query_scalar(
                            "SELECT body FROM messages WHERE target_id = $1 AND kind = 'edit' \
                             ORDER BY seq DESC LIMIT 1",
                        )
                        .bind(Self::id(m.message_id.0))
                        .fetch_optional(self.reader())
                        .await?;
                        if let Some(body) = latest {
                            m.body = body;
                        }
                    }
                    Ok(found)
                }
            }
        };
    };
}
pub(crate) use impl_store;
