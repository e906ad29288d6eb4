//! The SQLite store's search index lives in a file of its own (`<name>-search.db`),
//! filled from the messages: it survives being lost, and a database from before it
//! is numbered for it by its migration.

use chorus_core::model::MessageKind;
use chorus_core::{ConversationId, MessageId, UserId};
use chorus_store::sqlite::SqliteStore;
use chorus_store::{NewMessage, SearchQuery, Store, search_words};
use chrono::Utc;
use sqlx::{Connection, Executor, SqliteConnection};
use std::path::Path;

async fn bodies(store: &SqliteStore, user: UserId, words: &str) -> Vec<String> {
    let query = SearchQuery {
        words: search_words(words),
        conversation: None,
        limit: 10,
    };
    store
        .search(user, &query)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect()
}

/// A store with three messages of `a` to `b`, the second edited and the first deleted.
async fn filled(path: &Path) -> (SqliteStore, UserId, UserId, ConversationId) {
    let store = SqliteStore::open(path).await.unwrap();
    let a = store.create_user("a", "x").await.unwrap().id;
    let b = store.create_user("b", "x").await.unwrap().id;
    let (conversation, _) = store.direct(a, b).await.unwrap();
    let batch: Vec<NewMessage> = ["older words", "Ünïcode wörds", "newer words"]
        .iter()
        .enumerate()
        .map(|(i, body)| NewMessage::text(a, conversation.id, &format!("k{i}"), body, Utc::now()))
        .collect();
    let ids: Vec<MessageId> = batch.iter().map(|m| m.message_id).collect();
    store.append_messages(&batch).await.unwrap();
    let change = |key: &str, kind: MessageKind, target: MessageId, body: &str| NewMessage {
        kind,
        target_id: Some(target),
        ..NewMessage::text(a, conversation.id, key, body, Utc::now())
    };
    let changes = [
        change("e1", MessageKind::Edit, ids[1], "Ünïcode wörds edited"),
        change("d0", MessageKind::Delete, ids[0], ""),
    ];
    let appended = store.append_messages(&changes).await.unwrap();
    assert!(appended.iter().all(|a| a.as_new().is_some()));
    (store, a, b, conversation.id)
}

fn remove_index(path: &Path) {
    let index = path.with_file_name("chorus-search.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut file = index.as_os_str().to_owned();
        file.push(suffix);
        if Path::new(&file).exists() {
            std::fs::remove_file(&file).unwrap();
        }
    }
}

#[tokio::test]
async fn a_search_sees_current_bodies_newest_first_and_not_deleted_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, b, _) = filled(&dir.path().join("chorus.db")).await;
    assert_eq!(
        bodies(&store, b, "WORDS").await,
        ["newer words", "Ünïcode wörds edited"]
    );
    assert_eq!(bodies(&store, b, "edited").await, ["Ünïcode wörds edited"]);
    assert!(bodies(&store, b, "older").await.is_empty(), "deleted");
}

#[tokio::test]
async fn a_lost_index_file_is_rebuilt_from_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chorus.db");
    let (store, a, b, conversation) = filled(&path).await;
    assert_eq!(bodies(&store, b, "words").await.len(), 2);
    drop(store);
    remove_index(&path);

    let store = SqliteStore::open(&path).await.unwrap();
    assert!(path.with_file_name("chorus-search.db").exists());
    assert_eq!(
        bodies(&store, b, "words").await,
        ["newer words", "Ünïcode wörds edited"]
    );
    assert!(bodies(&store, b, "older").await.is_empty(), "deleted");
    let later = NewMessage::text(a, conversation, "k9", "latest words", Utc::now());
    store.append_messages(&[later]).await.unwrap();
    assert_eq!(
        bodies(&store, b, "words").await[0],
        "latest words",
        "new rows after the rebuilt ones"
    );
}

#[tokio::test]
async fn a_database_from_before_the_index_file_is_numbered_and_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chorus.db");
    let (store, _, b, _) = filled(&path).await;
    drop(store);
    remove_index(&path);
    // As the previous version left it: the index in the store's own file, the edit and
    // delete not numbered, and this migration not run.
    let mut db = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    db.execute(
        "CREATE VIRTUAL TABLE message_search USING fts5 (body, content = '', \
             contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2'); \
         CREATE INDEX messages_unindexed ON messages (sent_at) \
             WHERE search_id IS NULL AND kind = 'text' AND NOT deleted; \
         UPDATE messages SET search_id = NULL WHERE kind <> 'text'; \
         DELETE FROM _sqlx_migrations WHERE version = 11;",
    )
    .await
    .unwrap();
    db.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        bodies(&store, b, "words").await,
        ["newer words", "Ünïcode wörds edited"]
    );
    let mut db = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let numbered: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, search_id FROM messages ORDER BY search_id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let kinds: Vec<&str> = numbered.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["text", "text", "text", "edit", "delete"]);
    let ids: Vec<i64> = numbered.iter().map(|(_, id)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let old_index: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'message_search'")
            .fetch_optional(&mut db)
            .await
            .unwrap();
    assert_eq!(old_index, None, "the index left the store's file");
}
