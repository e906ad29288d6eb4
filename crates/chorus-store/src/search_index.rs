//! The SQLite store's search index: a contentless FTS5 table in a database file of its
//! own beside the store's (`<name>-search.db`), written by a connection of its own.
//!
//! Indexing in the store's transaction lengthened the transaction every message waits
//! for on SQLite's single writer (the median latency of the 1:1 sweep rose by a sixth
//! at 5,000 msg/s and doubled at 10,000), and indexing on that writer between its
//! transactions held messages up as much. A second file has a write lock of its own:
//! the indexer writes it on its own thread, in batches gathered over
//! [`GATHER`] (fewer, larger FTS5 segments), while the message writer goes on.
//!
//! What to index is read from the store: every entry has a `search_id`, its place in
//! the order entries were stored, and the index keeps how far it got (`indexed.up_to`,
//! in the same transaction as the rows it wrote), so it resumes after a crash, and a
//! lost or deleted index file is rebuilt from the messages. A text entry is indexed
//! under its `search_id` with its current body (its latest edit's); an edit or a
//! delete has its message indexed again (or taken out). A search first waits until the
//! index has caught up with what was stored when it started (at most [`SEARCH_WAIT`]),
//! and reads deleted messages out at query time, so a search never shows a message
//! deleted before it, nor misses one stored before it.

use crate::sqlite::push_list;
use crate::{Result, parse_id};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Entries read from the store per index transaction.
const BATCH: i64 = 2_000;

/// Rows named or inserted per statement (two parameters each at most), well under the
/// parameters SQLite allows in one statement.
const ROWS: usize = 500;

/// How long the indexer lets stored messages gather before it indexes them, unless a
/// search is waiting: at 5,000 msg/s, batches of about 500.
const GATHER: Duration = Duration::from_millis(100);

/// How often the indexer looks for entries nobody told it of (another process writing
/// the same store), and how long it waits after a failure before it tries again.
const POLL: Duration = Duration::from_secs(1);

/// The longest a search waits for the index to catch up before it reads what is there.
const SEARCH_WAIT: Duration = Duration::from_secs(2);

/// The name of the indexer's thread and of its connections' (sqlx runs each SQLite
/// connection on a thread of its own).
const THREAD: &str = "chorus-index";

/// Gives the calling thread, and so the threads it starts (its connections'), the
/// lowest priority (nice 19): indexing takes the CPU that messages leave. At the
/// default priority, its turns every [`GATHER`] delayed the messages in flight on a
/// busy machine. On a machine kept busy it falls behind, and catches up when the load
/// eases. Linux only (elsewhere indexing runs at the default priority).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::warn!(error = %e, "could not lower the search indexer's priority");
    }
}

/// The index file of the store at `store`: `chorus.db` → `chorus-search.db`.
pub(crate) fn path_beside(store: &Path) -> PathBuf {
    let stem = match store.extension() {
        Some(ext) if ext == "db" => store.file_stem().unwrap_or_default(),
        _ => store.file_name().unwrap_or_default(),
    };
    let mut name = stem.to_owned();
    name.push("-search.db");
    store.with_file_name(name)
}

/// The index's side of the store: what tells the indexer to work, and how far it got.
#[derive(Clone)]
pub(crate) struct SearchIndex {
    pending: Arc<Notify>,
    urgent: Arc<Notify>,
    indexed: watch::Receiver<i64>,
}

impl SearchIndex {
    /// Opens (creating if needed) the index file at `path` and starts its indexer, a
    /// thread of its own at the lowest priority with its own connections (to the index,
    /// and read-only to the store opened with `store`), which stops when `stop`'s
    /// sender is dropped.
    pub(crate) async fn open(
        path: &Path,
        store: SqliteConnectOptions,
        stop: watch::Receiver<()>,
    ) -> Result<Self> {
        crate::sqlite::private_files(path).map_err(sqlx::Error::Io)?;
        let pending = Arc::new(Notify::new());
        let urgent = Arc::new(Notify::new());
        let (opened, indexed) = tokio::sync::oneshot::channel();
        let path = path.to_owned();
        let (told, hurried) = (pending.clone(), urgent.clone());
        std::thread::Builder::new()
            .name(THREAD.to_owned())
            .spawn(move || {
                lower_priority();
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = opened.send(Err(sqlx::Error::Io(e).into()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match Indexer::open(&path, store).await {
                        Err(e) => {
                            let _ = opened.send(Err(e));
                        }
                        Ok((indexer, indexed)) => {
                            let _ = opened.send(Ok(indexed));
                            run(indexer, told, hurried, stop).await;
                        }
                    }
                });
            })
            .map_err(sqlx::Error::Io)?;
        let indexed = indexed.await.map_err(|_| sqlx::Error::WorkerCrashed)??;
        Ok(Self {
            pending,
            urgent,
            indexed,
        })
    }

    /// Entries were stored: the indexer indexes them within [`GATHER`].
    pub(crate) fn stored(&self) {
        self.pending.notify_one();
    }

    /// Waits until the index holds every entry up to `stored` (the last `search_id`
    /// when a search started), at most [`SEARCH_WAIT`]; past that, the search reads
    /// what is there (the indexer failing is in the log).
    pub(crate) async fn caught_up(&self, stored: i64) {
        if !self.wait(stored, SEARCH_WAIT).await {
            tracing::warn!(
                behind = stored - *self.indexed.borrow(),
                "search answered before the index caught up"
            );
        }
    }

    /// Waits until the index holds every entry up to `stored`, at most `limit`; says
    /// whether it does.
    pub(crate) async fn wait(&self, stored: i64, limit: Duration) -> bool {
        if *self.indexed.borrow() >= stored {
            return true;
        }
        self.urgent.notify_one();
        let mut indexed = self.indexed.clone();
        tokio::time::timeout(limit, indexed.wait_for(|up_to| *up_to >= stored))
            .await
            .is_ok()
    }
}

/// The indexer's connections and what it tells searches.
struct Indexer {
    store: SqlitePool,
    index: SqlitePool,
    progress: watch::Sender<i64>,
}

/// Indexes what was stored, told by `pending` (after [`GATHER`]) or `urgent` (at
/// once), or every [`POLL`], until `stop`'s sender is dropped.
async fn run(
    indexer: Indexer,
    pending: Arc<Notify>,
    urgent: Arc<Notify>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        let hurry = tokio::select! {
            _ = stop.changed() => break,
            () = urgent.notified() => true,
            () = pending.notified() => false,
            () = tokio::time::sleep(POLL) => true,
        };
        if !hurry {
            tokio::select! {
                _ = stop.changed() => break,
                () = urgent.notified() => {}
                () = tokio::time::sleep(GATHER) => {}
            }
        }
        loop {
            match indexer.index_batch().await {
                Ok(full) if full => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "search indexing failed; trying again");
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(POLL) => {}
                    }
                    break;
                }
            }
        }
    }
    indexer.index.close().await;
}

/// What the index is given of a message's row (its `conversation_id` and current
/// `body`): [`crate::search_text`].
fn indexed_text(row: &sqlx::sqlite::SqliteRow) -> Result<String> {
    let conversation = parse_id(row.try_get::<&str, _>("conversation_id")?)?;
    Ok(crate::search_text(conversation, row.try_get("body")?))
}

impl Indexer {
    /// The connections, on the indexer's thread, and how far the index got.
    async fn open(
        path: &Path,
        store: SqliteConnectOptions,
    ) -> Result<(Self, watch::Receiver<i64>)> {
        let store = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(store.read_only(true).thread_name(|_| THREAD.to_owned()))
            .await?;
        let index = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .thread_name(|_| THREAD.to_owned()),
            )
            .await?;
        // Case- and accent-insensitive words (`unicode61 remove_diacritics 2`), one row
        // per text message (rowid: its `search_id`); contentless, with deletes.
        sqlx::raw_sql(
            "CREATE VIRTUAL TABLE IF NOT EXISTS message_search USING fts5 (
                 body, content = '', contentless_delete = 1,
                 tokenize = 'unicode61 remove_diacritics 2');
             CREATE TABLE IF NOT EXISTS indexed (
                 one INTEGER PRIMARY KEY CHECK (one = 1),
                 up_to INTEGER NOT NULL);
             INSERT INTO indexed (one, up_to) VALUES (1, 0) ON CONFLICT DO NOTHING;",
        )
        .execute(&index)
        .await?;
        let up_to: i64 = sqlx::query_scalar("SELECT up_to FROM indexed")
            .fetch_one(&index)
            .await?;
        let (progress, indexed) = watch::channel(up_to);
        Ok((
            Self {
                store,
                index,
                progress,
            },
            indexed,
        ))
    }

    /// Indexes up to [`BATCH`] entries after the last indexed; says whether there may
    /// be more.
    async fn index_batch(&self) -> Result<bool> {
        let _timer = crate::QueryTimer::start("search_index");
        let up_to: i64 = sqlx::query_scalar("SELECT up_to FROM indexed")
            .fetch_one(&self.index)
            .await?;
        let rows = sqlx::query(
            "SELECT search_id, message_id, kind, conversation_id, target_id, body, \
                    deleted, edited_at \
             FROM messages WHERE search_id > $1 ORDER BY search_id LIMIT $2",
        )
        .bind(up_to)
        .bind(BATCH)
        .fetch_all(&self.store)
        .await?;
        let Some(last) = rows.last() else {
            self.progress.send_replace(up_to);
            return Ok(false);
        };
        let last: i64 = last.try_get("search_id")?;
        // What each message's row becomes (`None`: no row), by `search_id`; the
        // messages to read again (edited, deleted, or the target of an edit or delete).
        let mut rows_of: BTreeMap<i64, Option<String>> = BTreeMap::new();
        let mut again: Vec<String> = Vec::new();
        for row in &rows {
            match row.try_get::<&str, _>("kind")? {
                "text" => {
                    if row.try_get::<bool, _>("deleted")?
                        || row.try_get::<Option<i64>, _>("edited_at")?.is_some()
                    {
                        again.push(row.try_get("message_id")?);
                    } else {
                        rows_of.insert(row.try_get("search_id")?, Some(indexed_text(row)?));
                    }
                }
                "edit" | "delete" => again.extend(row.try_get::<Option<String>, _>("target_id")?),
                _ => {}
            }
        }
        again.sort_unstable();
        again.dedup();
        for chunk in again.chunks(ROWS) {
            let mut read = sqlx::QueryBuilder::new(
                "SELECT t.search_id, t.conversation_id, t.deleted, coalesce( \
                   (SELECT e.body FROM messages e WHERE e.target_id = t.message_id \
                    AND e.kind = 'edit' ORDER BY e.seq DESC LIMIT 1), t.body) AS body \
                 FROM messages t WHERE t.kind = 'text' AND t.search_id IS NOT NULL \
                 AND t.message_id IN (",
            );
            push_list(&mut read, chunk);
            read.push(")");
            for row in read.build().fetch_all(&self.store).await? {
                let text = if row.try_get::<bool, _>("deleted")? {
                    None
                } else {
                    Some(indexed_text(&row)?)
                };
                rows_of.insert(row.try_get("search_id")?, text);
            }
        }
        let mut tx = self.index.begin_with("BEGIN IMMEDIATE").await?;
        // Another store on the same files may have indexed meanwhile: its rows stand.
        let now: i64 = sqlx::query_scalar("SELECT up_to FROM indexed")
            .fetch_one(&mut *tx)
            .await?;
        if now != up_to {
            return Ok(true);
        }
        // A row indexed before is replaced; a new one is only added.
        let replaced: Vec<i64> = rows_of.range(..=up_to).map(|(id, _)| *id).collect();
        for chunk in replaced.chunks(ROWS) {
            let mut erase = sqlx::QueryBuilder::new("DELETE FROM message_search WHERE rowid IN (");
            push_list(&mut erase, chunk);
            erase.push(")");
            erase.build().execute(&mut *tx).await?;
        }
        let written: Vec<(i64, &String)> = rows_of
            .iter()
            .filter_map(|(id, text)| text.as_ref().map(|t| (*id, t)))
            .collect();
        for chunk in written.chunks(ROWS) {
            let mut insert = sqlx::QueryBuilder::new("INSERT INTO message_search (rowid, body) ");
            insert.push_values(chunk, |mut row, (id, text)| {
                row.push_bind(*id).push_bind(*text);
            });
            insert.build().execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE indexed SET up_to = $1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.progress.send_replace(last);
        Ok(i64::try_from(rows.len()).unwrap_or(i64::MAX) == BATCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_file_is_named_after_the_store() {
        assert_eq!(
            path_beside(Path::new("/data/chorus.db")),
            Path::new("/data/chorus-search.db")
        );
        assert_eq!(
            path_beside(Path::new("/data/store")),
            Path::new("/data/store-search.db")
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_indexer_runs_at_the_lowest_priority() {
        let dir = tempfile::tempdir().unwrap();
        let _store = crate::sqlite::SqliteStore::open(&dir.path().join("chorus.db"))
            .await
            .unwrap();
        let mut found = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if name.trim_end() != THREAD {
                continue;
            }
            let tid = task.file_name().to_str().unwrap().parse().unwrap();
            let pid = rustix::process::Pid::from_raw(tid).unwrap();
            assert_eq!(rustix::process::getpriority_process(Some(pid)).unwrap(), 19);
            found += 1;
        }
        assert!(found >= 1, "no thread named {THREAD}");
    }
}
