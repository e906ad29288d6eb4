//! SQLite store: one file, WAL mode, one writer connection and a pool of readers.
//!
//! SQLite admits one writer at a time; giving writes their own single connection
//! queues them in the pool instead of failing with `SQLITE_BUSY`, while readers in WAL
//! mode never wait for the writer.

use crate::{
    Account, Appended, ConversationRecord, NewMessage, Page, Result, Store, StoreError, direct_key,
    from_millis, millis, parse_id,
};
use async_trait::async_trait;
use chorus_core::model::{ConversationKind, Message, Origin, User};
use chorus_core::{ConversationId, MessageId, UserId};
use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool, sqlite::SqliteRow};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod automation;
mod invites;
mod jobs;

/// Messages looked up or inserted per statement: 8 parameters a message to insert,
/// well under the 32766 parameters SQLite allows in one trip.
const CHUNK: usize = 500;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Makes the database and its log readable and writable by this user only: created
/// with mode 0600 before SQLite opens it (SQLite gives the `-wal` and `-shm` files the
/// mode of the database file), and tightened to 0600 if an earlier version left them
/// open to others. Messages and password hashes are in there.
fn private_files(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
            return Ok(());
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
                tracing::info!(file = %Path::new(&file).display(), "made private (mode 0600)");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A SQLite database file.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    checkpointer: SqlitePool,
    /// Dropped with the last clone, which ends the checkpoint task.
    _checkpoints: Arc<tokio::sync::oneshot::Sender<()>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::connect(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true),
            false,
        )
        .await
    }

    /// Opens the database named by a `sqlite://PATH` URL. In WAL mode a commit is in
    /// the log file when it returns, so it survives the process being killed; with
    /// `sync_to_disk` the log is synced at every commit too (`synchronous = FULL`), so
    /// it survives a power loss.
    pub async fn open_url(url: &str, sync_to_disk: bool) -> Result<Self> {
        Self::connect(
            SqliteConnectOptions::from_str(url)?.create_if_missing(true),
            sync_to_disk,
        )
        .await
    }

    async fn connect(options: SqliteConnectOptions, sync_to_disk: bool) -> Result<Self> {
        private_files(options.get_filename()).map_err(sqlx::Error::Io)?;
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if sync_to_disk {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // The writer never checkpoints on commit: a checkpoint copies the log into the
        // database file and syncs it, which stalled commits (and so every message in
        // flight) for hundreds of milliseconds. A separate connection checkpoints in
        // the background (see [`SqliteStore::checkpoint`]).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", "0")
                    .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES)
                    .pragma("cache_size", WRITER_CACHE_KIB)
                    .pragma("temp_store", "memory"),
            )
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let store = Self {
            writer,
            reader,
            checkpointer,
            _checkpoints: Arc::new(stop),
        };
        tokio::spawn(checkpoints(
            store.checkpointer.clone(),
            store.writer.clone(),
            stopped,
        ));
        Ok(store)
    }

    /// Copies the write-ahead log into the database file, as the background task does
    /// every second, and says how far it got.
    ///
    /// A PASSIVE checkpoint on its own connection never blocks the writer, but under
    /// steady writes it never catches up either: the writer appends while it copies,
    /// so the log is never entirely copied when the next write starts, and only then
    /// does SQLite start the log over from its beginning. The log grew without bound
    /// (3.6 GB after a minute at 5000 msg/s). So once the log holds more than
    /// [`RESTART_AFTER_FRAMES`], the checkpointer copies again what was written during
    /// its last copy (until that is under [`CAUGHT_UP_FRAMES`]), then the writer's own
    /// connection, between two of its transactions, copies the few frames left and
    /// syncs the database file; the writer's next transaction starts the log over (its
    /// `journal_size_limit` cuts an oversized file back). The writer waits for that
    /// short copy and its sync (10-20 ms here), never for the bulk of the log, and
    /// never polls for a lock as a RESTART checkpoint from another connection would.
    pub async fn checkpoint(&self) -> Result<WalCheckpoint> {
        checkpoint(&self.checkpointer, &self.writer).await
    }
}

/// What a checkpoint found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalCheckpoint {
    /// Frames in the write-ahead log before the checkpoint.
    pub log_frames: i64,
    /// Whether the whole log was copied with the writer waiting: its next transaction
    /// starts the log over (unless a reader is still reading from the log then).
    pub caught_up: bool,
}

async fn checkpoint(checkpointer: &SqlitePool, writer: &SqlitePool) -> Result<WalCheckpoint> {
    let passive = "PRAGMA wal_checkpoint(PASSIVE)";
    let (_, log_frames, _): (i64, i64, i64) =
        sqlx::query_as(passive).fetch_one(checkpointer).await?;
    if log_frames <= RESTART_AFTER_FRAMES {
        return Ok(WalCheckpoint {
            log_frames,
            caught_up: false,
        });
    }
    // Copy again what the writer added during the last copy, until that is little:
    // the writer waits only for the last few frames.
    let mut last = log_frames;
    for _ in 1..MAX_PASSES {
        let (_, log, _): (i64, i64, i64) = sqlx::query_as(passive).fetch_one(checkpointer).await?;
        let added = log - last;
        last = log;
        if added <= CAUGHT_UP_FRAMES {
            break;
        }
    }
    let (busy, log, copied): (i64, i64, i64) = sqlx::query_as(passive).fetch_one(writer).await?;
    Ok(WalCheckpoint {
        log_frames,
        caught_up: busy == 0 && log == copied,
    })
}

/// Copies of the log the checkpointer makes at most before the writer's own.
const MAX_PASSES: u32 = 4;

/// Frames added during a copy below which the writer copies the rest itself.
pub const CAUGHT_UP_FRAMES: i64 = 256;

/// The writer's page cache, in KiB (SQLite's negative `cache_size`): the indexes a
/// message insert touches stay in memory instead of being read back from the file
/// (the default is 2 MiB).
const WRITER_CACHE_KIB: &str = "-65536";

/// How often the write-ahead log is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Log frames (pages of 4 KiB) past which a checkpoint has the log start over:
/// 256 MiB, ~4 s of writes at 5000 msg/s. The writer waits for that checkpoint's sync
/// of the database file (10-20 ms here), so the threshold trades disk for how often
/// messages in flight take that wait.
pub const RESTART_AFTER_FRAMES: i64 = 65536;

/// The size the log file is cut back to when it starts over (SQLite's
/// `journal_size_limit`), bytes: 512 MiB. Above what a log reaches between two
/// restarts, so that a steady load does not shrink and regrow the file each time.
const WAL_SIZE_LIMIT_BYTES: &str = "536870912";

/// Checkpoints the write-ahead log until the last handle on the store is dropped.
async fn checkpoints(
    checkpointer: SqlitePool,
    writer: SqlitePool,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => {
                checkpointer.close().await;
                return;
            }
            _ = tick.tick() => {}
        }
        if let Err(e) = checkpoint(&checkpointer, &writer).await {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
}

fn user_row(row: &SqliteRow) -> Result<User> {
    Ok(User {
        id: parse_id(row.try_get::<&str, _>("id")?)?,
        username: row.try_get("username")?,
    })
}

fn message_row(row: &SqliteRow) -> Result<Message> {
    let origin: &str = row.try_get("origin")?;
    Ok(Message {
        message_id: parse_id(row.try_get::<&str, _>("message_id")?)?,
        client_msg_id: row.try_get("client_msg_id")?,
        conversation_id: parse_id(row.try_get::<&str, _>("conversation_id")?)?,
        seq: row.try_get("seq")?,
        sender_id: parse_id(row.try_get::<&str, _>("sender_id")?)?,
        body: row.try_get("body")?,
        sent_at: from_millis(row.try_get("sent_at")?)?,
        origin: Origin::parse(origin).ok_or_else(|| StoreError::Corrupt(origin.into()))?,
    })
}

const MESSAGE_COLUMNS: &str =
    "message_id, client_msg_id, conversation_id, seq, sender_id, body, sent_at, origin";

const CONVERSATION_COLUMNS: &str = "id, kind, title, owner_id, last_seq, created_at";

/// What opens the writer's transactions: it holds the write lock from its start. A
/// deferred one (`BEGIN`) that reads before it writes fails with `SQLITE_BUSY`, without
/// waiting, when another connection to the file (another store, another process) wrote
/// in between; `BEGIN IMMEDIATE` waits for the lock instead (up to the busy timeout).
const BEGIN: &str = "BEGIN IMMEDIATE";

/// The writer's connection with a transaction opened in SQL (`BEGIN`). Unless
/// [`WriteTx::committed`] is called, dropping it closes the connection instead of
/// returning it to the pool, which rolls the transaction back: a connection left in a
/// transaction would fail every later `BEGIN`.
struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    open: bool,
}

impl WriteTx {
    async fn acquire(pool: &SqlitePool) -> Result<Self> {
        Ok(Self {
            conn: pool.acquire().await?,
            open: true,
        })
    }

    fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }

    /// The transaction was committed: the connection goes back to the pool.
    fn committed(mut self) {
        self.open = false;
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// `?, ?, …` with `values` bound.
fn push_list<'a>(query: &mut sqlx::QueryBuilder<'a, sqlx::Sqlite>, values: &'a [String]) {
    let mut list = query.separated(", ");
    for v in values {
        list.push_bind(v);
    }
}

fn conversation_row(row: &SqliteRow, members: Vec<UserId>) -> Result<ConversationRecord> {
    let kind: &str = row.try_get("kind")?;
    let owner: Option<&str> = row.try_get("owner_id")?;
    Ok(ConversationRecord {
        id: parse_id(row.try_get::<&str, _>("id")?)?,
        kind: ConversationKind::parse(kind).ok_or_else(|| StoreError::Corrupt(kind.into()))?,
        title: row.try_get("title")?,
        owner_id: owner.map(parse_id).transpose()?,
        members,
        last_seq: row.try_get("last_seq")?,
        created_at: from_millis(row.try_get("created_at")?)?,
    })
}

impl SqliteStore {
    /// A write transaction that holds the write lock from its start (see [`BEGIN`]).
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with(BEGIN).await?)
    }

    async fn members_in<'e, E>(&self, exec: E, conversation: ConversationId) -> Result<Vec<UserId>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
    {
        sqlx::query(
            "SELECT user_id FROM members WHERE conversation_id = ? ORDER BY joined_at, rowid",
        )
        .bind(conversation.to_string())
        .fetch_all(exec)
        .await?
        .iter()
        .map(|r| parse_id(r.try_get::<&str, _>(0)?))
        .collect()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn health(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn create_user(&self, username: &str, password_hash: &str) -> Result<User> {
        let _timer = crate::QueryTimer::start("create_user");
        insert_user(&self.writer, username, password_hash, millis(Utc::now())).await
    }

    async fn account(&self, username: &str) -> Result<Option<Account>> {
        let _timer = crate::QueryTimer::start("account");
        let row = sqlx::query("SELECT id, username, password_hash FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.reader)
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
        sqlx::query("SELECT id, username FROM users WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(user_row)
            .transpose()
    }

    async fn external_user(&self, issuer: &str, subject: &str) -> Result<Option<User>> {
        let _timer = crate::QueryTimer::start("external_user");
        sqlx::query(
            "SELECT u.id, u.username FROM identities i JOIN users u ON u.id = i.user_id \
             WHERE i.issuer = ? AND i.subject = ?",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.reader)
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
        let mut tx = self.write().await?;
        let linked = sqlx::query("SELECT 1 FROM identities WHERE issuer = ? AND subject = ?")
            .bind(issuer)
            .bind(subject)
            .fetch_optional(&mut *tx)
            .await?;
        if linked.is_some() {
            return Err(StoreError::Conflict("identity"));
        }
        let user = insert_user(&mut *tx, username, "", now).await?;
        sqlx::query(
            "INSERT INTO identities (issuer, subject, user_id, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(issuer)
        .bind(subject)
        .bind(user.id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn search_users(&self, prefix: &str, limit: i64) -> Result<Vec<User>> {
        // Range scan on the unique index instead of LIKE, which would treat `_` and `%`
        // in the prefix as wildcards.
        let upper = format!("{prefix}\u{10FFFF}");
        sqlx::query(
            "SELECT id, username FROM users WHERE username >= ? AND username < ? \
             ORDER BY username LIMIT ?",
        )
        .bind(prefix)
        .bind(upper)
        .bind(limit)
        .fetch_all(&self.reader)
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
        let now = Utc::now();
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO conversations (id, kind, title, owner_id, created_at) \
             VALUES (?, 'group', ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(title)
        .bind(owner.to_string())
        .bind(millis(now))
        .execute(&mut *tx)
        .await?;
        let mut all = vec![owner];
        for m in members {
            if !all.contains(m) {
                all.push(*m);
            }
        }
        for m in &all {
            insert_member(&mut tx, id, *m, millis(now)).await?;
        }
        tx.commit().await?;
        Ok(ConversationRecord {
            id,
            kind: ConversationKind::Group,
            title: Some(title.to_owned()),
            owner_id: Some(owner),
            members: all,
            last_seq: 0,
            created_at: from_millis(millis(now))?,
        })
    }

    async fn direct(&self, a: UserId, b: UserId) -> Result<(ConversationRecord, bool)> {
        let key = direct_key(a, b);
        let mut tx = self.write().await?;
        let existing = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE direct_key = ?"
        ))
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            let id: ConversationId = parse_id(row.try_get::<&str, _>("id")?)?;
            let members = self.members_in(&mut *tx, id).await?;
            return Ok((conversation_row(&row, members)?, false));
        }
        let id = ConversationId::new();
        let now = millis(Utc::now());
        sqlx::query(
            "INSERT INTO conversations (id, kind, direct_key, created_at) \
             VALUES (?, 'direct', ?, ?)",
        )
        .bind(id.to_string())
        .bind(&key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
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
        let row = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let members = self.members_in(&self.reader, id).await?;
                Ok(Some(conversation_row(&row, members)?))
            }
        }
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<(ConversationRecord, i64)>> {
        let _timer = crate::QueryTimer::start("conversations_of");
        let rows = sqlx::query(
            "SELECT c.id, c.kind, c.title, c.owner_id, c.last_seq, c.created_at, m.read_seq \
             FROM members m JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.user_id = ? ORDER BY c.created_at, c.id",
        )
        .bind(user.to_string())
        .fetch_all(&self.reader)
        .await?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?;
        let mut members: HashMap<String, Vec<UserId>> = HashMap::new();
        if !ids.is_empty() {
            let all = sqlx::query(
                "SELECT m.conversation_id, m.user_id FROM members m \
                 WHERE m.conversation_id IN (SELECT conversation_id FROM members WHERE user_id = ?) \
                 ORDER BY m.joined_at, m.rowid",
            )
            .bind(user.to_string())
            .fetch_all(&self.reader)
            .await?;
            for r in all {
                members
                    .entry(r.try_get("conversation_id")?)
                    .or_default()
                    .push(parse_id(r.try_get::<&str, _>("user_id")?)?);
            }
        }
        rows.iter()
            .zip(ids)
            .map(|(row, id)| {
                let m = members.remove(&id).unwrap_or_default();
                Ok((conversation_row(row, m)?, row.try_get("read_seq")?))
            })
            .collect()
    }

    async fn groups_owned(&self, user: UserId) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM conversations WHERE owner_id = ? AND kind = 'group'",
        )
        .bind(user.to_string())
        .fetch_one(&self.reader)
        .await?)
    }

    async fn read_seq(&self, conversation: ConversationId, user: UserId) -> Result<Option<i64>> {
        let _timer = crate::QueryTimer::start("read_seq");
        Ok(sqlx::query_scalar(
            "SELECT read_seq FROM members WHERE conversation_id = ? AND user_id = ?",
        )
        .bind(conversation.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.reader)
        .await?)
    }

    async fn add_member(&self, conversation: ConversationId, user: UserId) -> Result<()> {
        let mut tx = self.write().await?;
        insert_member(&mut tx, conversation, user, millis(Utc::now())).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_member(&self, conversation: ConversationId, user: UserId) -> Result<()> {
        let mut tx = self.write().await?;
        let removed = sqlx::query("DELETE FROM members WHERE conversation_id = ? AND user_id = ?")
            .bind(conversation.to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        if removed.rows_affected() == 0 {
            return Err(StoreError::NotFound("member"));
        }
        sqlx::query(
            "UPDATE conversations SET owner_id = \
               (SELECT user_id FROM members WHERE conversation_id = ?1 \
                ORDER BY joined_at, rowid LIMIT 1) \
             WHERE id = ?1 AND owner_id = ?2",
        )
        .bind(conversation.to_string())
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
        let _timer = crate::QueryTimer::start("members");
        self.members_in(&self.reader, conversation).await
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
             WHERE m.user_id = ?1 AND o.user_id <> ?1 \
             AND (SELECT count(*) FROM members n WHERE n.conversation_id = m.conversation_id) <= ?2"
        );
        sqlx::query(&sql)
            .bind(user.to_string())
            .bind(crate::PRESENCE_MAX_GROUP)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| parse_id(r.try_get::<&str, _>(0)?))
            .collect()
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>> {
        let _timer = crate::QueryTimer::start("append_messages");
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Two round trips to sqlx's SQLite thread for a batch of up to 500 messages
        // (begin and read; write and commit), whatever it holds: each trip costs more
        // than the statements it carries, and the writer is what every message waits
        // for. The transaction is opened and committed in SQL, so sqlx does not know
        // about it: `WriteTx` closes the connection (SQLite rolls back) if this stops
        // before the commit, on an error or when the caller drops the future.
        let mut tx = WriteTx::acquire(&self.writer).await?;
        let ids: Vec<String> = batch.iter().map(|m| m.message_id.to_string()).collect();
        let mut conversations: Vec<String> = batch
            .iter()
            .map(|m| m.conversation_id.to_string())
            .collect();
        conversations.sort_unstable();
        conversations.dedup();
        // Messages already stored and the counters of the batch's conversations, both
        // in one trip per chunk: the rows of the two statements differ in width.
        let mut stored: HashMap<MessageId, Message> = HashMap::new();
        let mut last_seq: HashMap<ConversationId, i64> = HashMap::new();
        let id_chunks: Vec<&[String]> = ids.chunks(CHUNK).collect();
        let conversation_chunks: Vec<&[String]> = conversations.chunks(CHUNK).collect();
        for i in 0..id_chunks.len().max(conversation_chunks.len()) {
            let mut read = sqlx::QueryBuilder::new("");
            if i == 0 {
                read.push(BEGIN).push("; ");
            }
            if let Some(chunk) = id_chunks.get(i) {
                read.push(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id IN ("
                ));
                push_list(&mut read, chunk);
                read.push("); ");
            }
            if let Some(chunk) = conversation_chunks.get(i) {
                read.push("SELECT id, last_seq FROM conversations WHERE id IN (");
                push_list(&mut read, chunk);
                read.push(");");
            }
            for row in read.build().fetch_all(tx.conn()).await? {
                if row.len() == 2 {
                    let id = parse_id(row.try_get::<&str, _>("id")?)?;
                    last_seq.insert(id, row.try_get("last_seq")?);
                } else {
                    let message = message_row(&row)?;
                    stored.insert(message.message_id, message);
                }
            }
        }
        // Numbered in batch order; a message stored before, or earlier in this batch,
        // is not stored again.
        let mut out = Vec::with_capacity(batch.len());
        let mut advanced: HashMap<ConversationId, i64> = HashMap::new();
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
        // The new messages and the conversations' counters, in one trip per chunk.
        let new: Vec<&Message> = out.iter().filter_map(Appended::as_new).collect();
        let advanced: Vec<(String, i64)> = advanced
            .into_iter()
            .map(|(id, last)| (id.to_string(), last))
            .collect();
        let new_chunks: Vec<&[&Message]> = new.chunks(CHUNK).collect();
        let advanced_chunks: Vec<&[(String, i64)]> = advanced.chunks(CHUNK).collect();
        let writes = new_chunks.len().max(advanced_chunks.len());
        if writes == 0 {
            sqlx::query("COMMIT").execute(tx.conn()).await?;
        }
        for i in 0..writes {
            let mut write = sqlx::QueryBuilder::new("");
            if let Some(chunk) = new_chunks.get(i) {
                write.push(format!("INSERT INTO messages ({MESSAGE_COLUMNS}) "));
                write.push_values(chunk.iter(), |mut row, m| {
                    row.push_bind(m.message_id.to_string())
                        .push_bind(&m.client_msg_id)
                        .push_bind(m.conversation_id.to_string())
                        .push_bind(m.seq)
                        .push_bind(m.sender_id.to_string())
                        .push_bind(&m.body)
                        .push_bind(millis(m.sent_at))
                        .push_bind(m.origin.as_str());
                });
                write.push("; ");
            }
            if let Some(chunk) = advanced_chunks.get(i) {
                write.push("WITH v(id, last) AS (");
                write.push_values(chunk.iter(), |mut row, (id, last)| {
                    row.push_bind(id).push_bind(*last);
                });
                write.push(
                    ") UPDATE conversations SET last_seq = v.last FROM v \
                     WHERE conversations.id = v.id AND conversations.last_seq < v.last;",
                );
            }
            if i + 1 == writes {
                write.push(" COMMIT;");
            }
            write.build().execute(tx.conn()).await?;
        }
        tx.committed();
        Ok(out)
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>> {
        let _timer = crate::QueryTimer::start("message");
        sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
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
                     WHERE conversation_id = ? AND seq > ? AND seq < ? ORDER BY seq LIMIT ?"
                ))
                .bind(conversation.to_string())
                .bind(after)
                .bind(before)
                .bind(page.limit)
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                let mut rows = sqlx::query(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages \
                     WHERE conversation_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
                ))
                .bind(conversation.to_string())
                .bind(before)
                .bind(page.limit)
                .fetch_all(&self.reader)
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
            "UPDATE members SET read_seq = MAX(read_seq, \
               MIN(?1, (SELECT last_seq FROM conversations WHERE id = ?2))) \
             WHERE conversation_id = ?2 AND user_id = ?3 RETURNING read_seq",
        )
        .bind(seq)
        .bind(conversation.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.writer)
        .await?;
        marker.ok_or(StoreError::NotFound("member"))
    }

    async fn last_seqs(&self, user: UserId) -> Result<Vec<(ConversationId, i64)>> {
        let _timer = crate::QueryTimer::start("last_seqs");
        sqlx::query(
            "SELECT c.id, c.last_seq FROM members m JOIN conversations c \
             ON c.id = m.conversation_id WHERE m.user_id = ?",
        )
        .bind(user.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| Ok((parse_id(r.try_get::<&str, _>(0)?)?, r.try_get(1)?)))
        .collect()
    }
}

/// Inserts a new user; `Conflict("username")` when the name is taken.
async fn insert_user<'e, E>(exec: E, username: &str, password_hash: &str, now: i64) -> Result<User>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let user = User {
        id: UserId::new(),
        username: username.to_owned(),
    };
    let res = sqlx::query(
        "INSERT INTO users (id, username, password_hash, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(user.id.to_string())
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

async fn insert_member(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    conversation: ConversationId,
    user: UserId,
    now: i64,
) -> Result<()> {
    let res = sqlx::query(
        "INSERT INTO members (conversation_id, user_id, joined_at) VALUES (?, ?, ?) \
         ON CONFLICT DO NOTHING",
    )
    .bind(conversation.to_string())
    .bind(user.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_dropped_before_its_commit_leaves_no_open_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let mut tx = WriteTx::acquire(&store.writer).await.unwrap();
        sqlx::query(BEGIN).execute(tx.conn()).await.unwrap();
        sqlx::query("UPDATE conversations SET last_seq = 1")
            .execute(tx.conn())
            .await
            .unwrap();
        drop(tx);
        // The pool's only writer connection opens a transaction again.
        let mut tx = WriteTx::acquire(&store.writer).await.unwrap();
        sqlx::query(BEGIN).execute(tx.conn()).await.unwrap();
        sqlx::query("COMMIT").execute(tx.conn()).await.unwrap();
        tx.committed();
        assert!(store.create_user("after", "x").await.is_ok());
    }
}
