//! SQLite store: one file, WAL mode, one writer connection and a pool of readers.
//!
//! SQLite admits one writer at a time; giving writes their own single connection
//! queues them in the pool instead of failing with `SQLITE_BUSY`, while readers in WAL
//! mode never wait for the writer.

use crate::append::Stored;
use crate::backend::{Backend, MESSAGE_COLUMNS, NEW_MESSAGE_COLUMNS, new_direct};
use crate::search_index::SearchIndex;
use crate::{Appended, ConversationRecord, NewMessage, Result, direct_key, millis, parse_id};
use chorus_core::model::{Attachment, Message};
use chorus_core::{ConversationId, MessageId, UserId};
use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool, sqlite::SqliteRow};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// Messages looked up or inserted per statement: 11 parameters a message to insert and
/// 3 for each of its attachments (at most 10), well under the 32766 parameters SQLite
/// allows in one trip.
const CHUNK: usize = 500;

/// Mention rows inserted per statement (3 parameters each).
const MENTION_ROWS: usize = 10_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Makes the database and its log readable and writable by this user only: created
/// with mode 0600 before SQLite opens it (SQLite gives the `-wal` and `-shm` files the
/// mode of the database file), and tightened to 0600 if an earlier version left them
/// open to others. Messages and password hashes are in there.
pub(crate) fn private_files(path: &Path) -> std::io::Result<()> {
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
    /// The search index, in a file of its own (see [`crate::search_index`]).
    search: SearchIndex,
    /// Dropped with the last clone, which ends the checkpoint and indexing tasks.
    _stop: Arc<watch::Sender<()>>,
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
        let (stop, stopped) = watch::channel(());
        let search_path = crate::search_index::path_beside(options.get_filename());
        let search = SearchIndex::open(&search_path, options.clone(), stopped.clone()).await?;
        // Readers see the search index as the schema `search`.
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    sqlx::query("ATTACH DATABASE $1 AS search")
                        .bind(search_path.to_string_lossy().into_owned())
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(options.clone().read_only(true))
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let store = Self {
            writer,
            reader,
            checkpointer,
            search,
            _stop: Arc::new(stop),
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

    /// Waits until the search index holds every entry stored when this was called,
    /// however long that takes (a search waits at most a few seconds, then reads what
    /// is there).
    pub async fn search_caught_up(&self) -> Result<()> {
        let stored = self.last_search_id().await?;
        while !self.search.wait(stored, Duration::from_secs(60)).await {}
        Ok(())
    }

    /// The place of the last entry stored in the order the search index follows.
    async fn last_search_id(&self) -> Result<i64> {
        let last: Option<i64> = sqlx::query_scalar(LAST_SEARCH_ID)
            .fetch_one(&self.reader)
            .await?;
        Ok(last.unwrap_or(0))
    }
}

/// The last `search_id` given (NULL before the first), as `last_search`: read through
/// the partial index `messages_by_search_id`, which the `IS NOT NULL` lets SQLite use.
const LAST_SEARCH_ID: &str =
    "SELECT max(search_id) AS last_search FROM messages WHERE search_id IS NOT NULL";

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
    let _timer = crate::QueryTimer::start("wal_checkpoint");
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
    // What every message in flight waits for: its own `op` in `chorus_db_query_seconds`.
    let writer_wait = crate::QueryTimer::start("wal_checkpoint_writer");
    let (busy, log, copied): (i64, i64, i64) = sqlx::query_as(passive).fetch_one(writer).await?;
    drop(writer_wait);
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
    mut stopped: watch::Receiver<()>,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => {
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
pub(crate) fn push_list<'a, T>(query: &mut sqlx::QueryBuilder<'a, sqlx::Sqlite>, values: &'a [T])
where
    &'a T: sqlx::Encode<'a, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    let mut list = query.separated(", ");
    for v in values {
        list.push_bind(v);
    }
}

impl Backend for SqliteStore {
    type Db = sqlx::Sqlite;
    /// The hyphenated form, as TEXT.
    type Id = String;

    /// The order rows were inserted in.
    const JOINED_ORDER: &'static str = "rowid";
    /// SQLite's scalar (two-argument) `max` and `min`.
    const GREATEST: &'static str = "MAX";
    const LEAST: &'static str = "MIN";
    /// Nothing: a write transaction holds the database's only write lock (see [`BEGIN`]).
    const FOR_UPDATE: &'static str = "";
    /// Nothing in the transaction: the index, in a file of its own, follows the
    /// entries stored ([`crate::search_index`]).
    const SEARCH_EDIT: Option<&'static str> = None;
    const SEARCH_ERASE: Option<&'static str> = None;

    /// FTS5's syntax. A word has only letters and digits; quoting keeps FTS5's
    /// operators (`AND`, `NEAR`) plain words.
    const SEARCH_OR: &'static str = " OR ";
    const SEARCH_AND: &'static str = " AND ";
    fn search_prefix(tagged_word: &str) -> String {
        format!("\"{tagged_word}\"*")
    }

    fn id(id: Uuid) -> String {
        id.to_string()
    }

    fn get_id(row: &SqliteRow, column: &str) -> Result<Uuid> {
        parse_id(row.try_get::<&str, _>(column)?)
    }

    fn get_opt_id(row: &SqliteRow, column: &str) -> Result<Option<Uuid>> {
        row.try_get::<Option<&str>, _>(column)?
            .map(parse_id)
            .transpose()
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// A write transaction that holds the write lock from its start (see [`BEGIN`]).
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with(BEGIN).await?)
    }

    /// Nothing to do: the write transaction holds the database's only write lock.
    async fn lock_conversation(
        _tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        _conversation: ConversationId,
    ) -> Result<()> {
        Ok(())
    }

    async fn append(&self, batch: &[NewMessage]) -> Result<Vec<Appended>> {
        // Two round trips to sqlx's SQLite thread for a batch of up to 500 messages
        // (begin and read; write and commit), whatever it holds: each trip costs more
        // than the statements it carries, and the writer is what every message waits
        // for. The transaction is opened and committed in SQL, so sqlx does not know
        // about it: `WriteTx` closes the connection (SQLite rolls back) if this stops
        // before the commit, on an error or when the caller drops the future.
        let mut tx = WriteTx::acquire(&self.writer).await?;
        let ids: Vec<String> = crate::append::lookups(batch)
            .iter()
            .map(MessageId::to_string)
            .collect();
        let conversations: Vec<String> = crate::append::conversations(batch)
            .iter()
            .map(ConversationId::to_string)
            .collect();
        let reacted: Vec<String> = crate::append::reaction_targets(batch)
            .iter()
            .map(MessageId::to_string)
            .collect();
        // Messages already stored (and those the changes target), the counters of the
        // batch's conversations, the reactions it touches and the last search row, in
        // one trip per chunk: the rows of the statements differ in width.
        let mut stored = Stored::default();
        let mut last_search: i64 = 0;
        let id_chunks: Vec<&[String]> = ids.chunks(CHUNK).collect();
        let conversation_chunks: Vec<&[String]> = conversations.chunks(CHUNK).collect();
        let reacted_chunks: Vec<&[String]> = reacted.chunks(CHUNK).collect();
        let reads = id_chunks
            .len()
            .max(conversation_chunks.len())
            .max(reacted_chunks.len());
        for i in 0..reads {
            let mut read = sqlx::QueryBuilder::new("");
            if i == 0 {
                read.push(BEGIN).push("; ").push(LAST_SEARCH_ID).push("; ");
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
                read.push("); ");
            }
            if let Some(chunk) = reacted_chunks.get(i) {
                read.push("SELECT target_id, user_id, emoji FROM reactions WHERE target_id IN (");
                push_list(&mut read, chunk);
                read.push(");");
            }
            for row in read.build().fetch_all(tx.conn()).await? {
                match row.len() {
                    1 => last_search = row.try_get::<Option<i64>, _>("last_search")?.unwrap_or(0),
                    2 => {
                        let id = parse_id(row.try_get::<&str, _>("id")?)?;
                        stored.last_seq.insert(id, row.try_get("last_seq")?);
                    }
                    3 => {
                        stored.reactions.insert((
                            parse_id(row.try_get::<&str, _>("target_id")?)?,
                            parse_id(row.try_get::<&str, _>("user_id")?)?,
                            row.try_get("emoji")?,
                        ));
                    }
                    _ => {
                        let message = Self::message_row(&row)?;
                        stored.messages.insert(message.message_id, message);
                    }
                }
            }
        }
        let plan = crate::append::plan(batch, stored)?;
        // The new messages and the conversations' counters, in one trip per chunk.
        let new = plan.new_messages();
        let advanced: Vec<(String, i64)> = plan
            .last_seqs
            .iter()
            .map(|(id, last)| (id.to_string(), *last))
            .collect();
        // Each new entry gets the next place in the order entries were stored, which
        // the search index follows (a message's row there is its `search_id`: newest
        // first is descending rowid).
        let search_ids: HashMap<MessageId, i64> = new
            .iter()
            .zip(last_search + 1..)
            .map(|(m, id)| (m.message_id, id))
            .collect();
        let new_chunks: Vec<&[&Message]> = new.chunks(CHUNK).collect();
        let advanced_chunks: Vec<&[(String, i64)]> = advanced.chunks(CHUNK).collect();
        let writes = new_chunks.len().max(advanced_chunks.len());
        // Whom the new messages mention: a message may name every member of a big group,
        // so these rows go in statements of their own, cut by rows, not by messages.
        let mentioned: Vec<(String, String, i64)> = new
            .iter()
            .filter(|m| m.kind.is_text())
            .flat_map(|m| {
                m.mentions
                    .iter()
                    .map(|u| (u.to_string(), m.conversation_id.to_string(), m.seq))
            })
            .collect();
        for rows in mentioned.chunks(MENTION_ROWS) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO message_mentions (user_id, conversation_id, seq) ",
            );
            insert.push_values(rows, |mut row, (user, conversation, seq)| {
                row.push_bind(user).push_bind(conversation).push_bind(*seq);
            });
            insert.push(" ON CONFLICT DO NOTHING");
            insert.build().execute(tx.conn()).await?;
        }
        for i in 0..writes {
            let mut write = sqlx::QueryBuilder::new("");
            if let Some(chunk) = new_chunks.get(i) {
                write.push(format!(
                    "INSERT INTO messages ({NEW_MESSAGE_COLUMNS}, search_id) "
                ));
                write.push_values(chunk.iter(), |mut row, m| {
                    row.push_bind(m.message_id.to_string())
                        .push_bind(&m.client_msg_id)
                        .push_bind(m.conversation_id.to_string())
                        .push_bind(m.seq)
                        .push_bind(m.sender_id.to_string())
                        .push_bind(&m.body)
                        .push_bind(millis(m.sent_at))
                        .push_bind(m.origin.as_str())
                        .push_bind(crate::attachments::to_column(&m.attachments))
                        .push_bind(m.reply_to.map(|r| r.to_string()))
                        .push_bind(crate::mentions_to_column(&m.mentions))
                        .push_bind(m.kind.as_str())
                        .push_bind(m.target_id.map(|t| t.to_string()))
                        .push_bind(m.emoji.as_deref())
                        .push_bind(m.remove)
                        .push_bind(search_ids.get(&m.message_id).copied());
                });
                write.push("; ");
                let links: Vec<(&Message, &Attachment)> = chunk
                    .iter()
                    .flat_map(|m| m.attachments.iter().map(move |a| (*m, a)))
                    .collect();
                if !links.is_empty() {
                    write.push(
                        "INSERT INTO message_attachments \
                         (attachment_id, message_id, conversation_id) ",
                    );
                    write.push_values(links, |mut row, (m, a)| {
                        row.push_bind(a.attachment_id.to_string())
                            .push_bind(m.message_id.to_string())
                            .push_bind(m.conversation_id.to_string());
                    });
                    write.push(" ON CONFLICT DO NOTHING; ");
                }
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
            if i + 1 == writes && !plan.has_changes() {
                write.push(" COMMIT;");
            }
            write.build().execute(tx.conn()).await?;
        }
        // Changes are few: a statement or a few each, after the rows they change.
        let changes = plan.has_changes();
        if changes {
            Self::write_changes(tx.conn(), &plan).await?;
        }
        if changes || writes == 0 {
            sqlx::query("COMMIT").execute(tx.conn()).await?;
        }
        tx.committed();
        if !new.is_empty() {
            self.search.stored();
        }
        Ok(plan.appended)
    }

    async fn direct_pair(&self, a: UserId, b: UserId) -> Result<(ConversationRecord, bool)> {
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
            let members = Self::members_in(&mut *tx, id).await?;
            return Ok((Self::conversation_row(&row, members)?, false));
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
        Self::insert_member(&mut tx, id, a, now).await?;
        Self::insert_member(&mut tx, id, b, now).await?;
        tx.commit().await?;
        Ok((new_direct(id, a, b, now)?, true))
    }

    async fn find_conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let members = Self::members_in(&self.reader, id).await?;
                Ok(Some(Self::conversation_row(&row, members)?))
            }
        }
    }

    /// Waits for the index to hold what was stored when the search started.
    async fn search_ready(&self) -> Result<()> {
        let stored = self.last_search_id().await?;
        self.search.caught_up(stored).await;
        Ok(())
    }

    /// The full-text index read newest first (descending rowid), each match joined to
    /// its message and kept if it is of one of `conversations` (bound as one JSON
    /// array).
    async fn search_matching(
        &self,
        conversations: &[ConversationId],
        matching: String,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {} FROM search.message_search s JOIN messages m ON m.search_id = s.rowid \
             WHERE s.message_search MATCH $1 AND NOT m.deleted AND m.conversation_id IN \
             (SELECT value FROM json_each($2)) \
             ORDER BY s.rowid DESC LIMIT $3",
            crate::backend::message_columns_of_m()
        );
        sqlx::query(&sql)
            .bind(matching)
            .bind(serde_json::to_string(conversations).expect("ids always serialize"))
            .bind(limit)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(Self::message_row)
            .collect()
    }

    async fn conversations_with_markers(
        &self,
        user: UserId,
    ) -> Result<Vec<(ConversationRecord, i64)>> {
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
                Ok((Self::conversation_row(row, m)?, row.try_get("read_seq")?))
            })
            .collect()
    }
}

crate::backend::impl_store!(SqliteStore);
crate::automation::impl_automation_store!(SqliteStore);
crate::jobs::impl_job_store!(SqliteStore);
crate::invites::impl_invite_store!(SqliteStore);
crate::attachments::impl_attachment_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    /// The SQL shared with PostgreSQL numbers its parameters: sqlx binds `$N` on SQLite
    /// to the N-th bound value, wherever it stands and however often.
    #[tokio::test]
    async fn numbered_parameters_bind_by_position() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        let row: (i64, String, i64, String) = sqlx::query_as("SELECT $3, $1, $3 + $2, $1 || $1")
            .bind("a")
            .bind(10_i64)
            .bind(5_i64)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(row, (5, "a".to_owned(), 15, "aa".to_owned()));
    }

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
