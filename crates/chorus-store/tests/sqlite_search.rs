//! Messages stored before search existed are indexed when the store opens.

use chorus_store::sqlite::SqliteStore;
use chorus_store::{NewMessage, SearchQuery, Store, search_words};
use chrono::Utc;
use sqlx::{Connection, Executor, SqliteConnection};

#[tokio::test]
async fn messages_stored_before_search_are_indexed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chorus.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let a = store.create_user("a", "x").await.unwrap().id;
    let b = store.create_user("b", "x").await.unwrap().id;
    let (conversation, _) = store.direct(a, b).await.unwrap();
    let batch: Vec<NewMessage> = ["older words", "Ünïcode wörds", "newer words"]
        .iter()
        .enumerate()
        .map(|(i, body)| NewMessage::text(a, conversation.id, &format!("k{i}"), body, Utc::now()))
        .collect();
    store.append_messages(&batch).await.unwrap();
    drop(store);
    // As an earlier version left them: no row in the index, no search_id.
    let mut db = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    db.execute("DELETE FROM message_search; UPDATE messages SET search_id = NULL")
        .await
        .unwrap();
    db.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    let query = SearchQuery {
        words: search_words("WORDS"),
        conversation: None,
        limit: 10,
    };
    let bodies: Vec<String> = store
        .search(b, &query)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(
        bodies,
        ["newer words", "Ünïcode wörds", "older words"],
        "newest first"
    );
    let later = NewMessage::text(a, conversation.id, "k9", "latest words", Utc::now());
    store.append_messages(&[later]).await.unwrap();
    let first = store.search(b, &query).await.unwrap();
    assert_eq!(
        first[0].body, "latest words",
        "new rows after the indexed ones"
    );
}
