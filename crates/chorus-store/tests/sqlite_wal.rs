//! The SQLite write-ahead log stays bounded while the writer never stops.

use chorus_store::sqlite::{RESTART_AFTER_FRAMES, SqliteStore};
use chorus_store::{NewMessage, Store};
use chrono::Utc;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_starts_over_under_continuous_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("chorus.db"))
        .await
        .unwrap();
    let a = store.create_user("a", "x").await.unwrap();
    let b = store.create_user("b", "x").await.unwrap();
    let (conversation, _) = store.direct(a.id, b.id).await.unwrap();

    // A writer that appends batches back to back until told to stop, counting them.
    let (batches_tx, mut batches) = watch::channel(0u64);
    let (stop_tx, mut stop) = watch::channel(false);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !*stop.borrow_and_update() {
                let batch: Vec<NewMessage> = (0..50)
                    .map(|i| {
                        let client_msg_id = format!("{n}-{i}");
                        NewMessage::text(
                            a.id,
                            conversation.id,
                            &client_msg_id,
                            &"x".repeat(1000),
                            Utc::now(),
                        )
                    })
                    .collect();
                store.append_messages(&batch).await.unwrap();
                n += 1;
                batches_tx.send_replace(n);
            }
        })
    };

    // Checkpoint as the background task does, until one catches up: a PASSIVE
    // checkpoint alone never catches up with a writer that does not pause.
    let before = loop {
        let done = store.checkpoint().await.unwrap();
        if done.caught_up {
            break done;
        }
        assert!(
            done.log_frames < 20 * RESTART_AFTER_FRAMES,
            "the log grew to {} frames without starting over",
            done.log_frames
        );
        batches.changed().await.unwrap();
    };
    assert!(before.log_frames > RESTART_AFTER_FRAMES);

    // The writer goes on; the log it writes now starts from the beginning.
    let seen = *batches.borrow_and_update();
    batches.wait_for(|n| *n >= seen + 5).await.unwrap();
    let after = store.checkpoint().await.unwrap();
    stop_tx.send_replace(true);
    writer.await.unwrap();
    assert!(
        after.log_frames < before.log_frames,
        "the log did not start over: {} frames after, {} before",
        after.log_frames,
        before.log_frames
    );
    let stored = store.conversation(conversation.id).await.unwrap().unwrap();
    assert_eq!(
        stored.last_seq,
        *batches.borrow() as i64 * 50,
        "every message written across the restarts is stored"
    );
}
