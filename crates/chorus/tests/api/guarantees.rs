//! The spine's guarantees: total order per conversation, idempotent sends, stored
//! before routed, exact replay on sync, every session gets every message once.

use crate::helpers::*;
use serde_json::{Value, json};
use std::collections::HashSet;

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn concurrent_senders_get_a_gapless_order_seen_identically_by_every_session() {
    let app = TestApp::spawn().await;
    const SENDERS: usize = 6;
    const EACH: usize = 40;
    let mut users = Vec::new();
    for i in 0..SENDERS {
        users.push(app.register(&format!("u{i}")).await);
    }
    let others: Vec<&TestUser> = users[1..].iter().collect();
    let conv = app.group(&users[0], &others).await;
    // Two listening sessions for the first user, one for each other member.
    let mut listeners = vec![app.ws(&users[0]).await, app.ws(&users[0]).await];
    for u in &users[1..] {
        listeners.push(app.ws(u).await);
    }
    let total = SENDERS * EACH;
    // Every sender is connected before anyone sends, so each sees the whole stream.
    let mut senders = Vec::new();
    for u in &users {
        senders.push(app.ws(u).await);
    }
    let mut tasks = Vec::new();
    for (i, mut ws) in senders.into_iter().enumerate() {
        let conv = conv.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..EACH {
                ws.send_message(&conv, &format!("c{i}-{j}"), &format!("{i}:{j}"))
                    .await;
            }
            ws.messages(SENDERS * EACH).await
        }));
    }
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.unwrap());
    }
    for l in &mut listeners {
        views.push(l.messages(total).await);
    }
    let expected: Vec<i64> = (1..=total as i64).collect();
    let stored = app.history(&users[1], &conv).await;
    assert_eq!(seqs(&stored), expected, "seq is 1..N with no gap");
    for view in &views {
        assert_eq!(
            seqs(view),
            expected,
            "each session sees every message once, in order"
        );
        assert_eq!(view, &stored, "and exactly what is stored");
    }
    // Per sender, the order of sends is kept.
    for i in 0..SENDERS {
        let mine: Vec<usize> = stored
            .iter()
            .filter_map(|m| {
                m["body"]
                    .as_str()
                    .unwrap()
                    .strip_prefix(&format!("{i}:"))
                    .map(|j| j.parse().unwrap())
            })
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
    }
    for l in &mut listeners {
        l.assert_none("message", "nothing extra").await;
    }
}

#[tokio::test]
async fn retried_sends_are_stored_once_with_one_message_id() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut ws = app.ws(&ada).await;
    let mut other_session = app.ws(&ada).await;
    let first = ws.send_message(&conv, "same-key", "hello").await;
    let got = ws.messages(1).await;
    assert_eq!(got[0]["message_id"], first.as_str());
    // Retries after it was stored, on another session and over HTTP.
    assert_eq!(ws.send_message(&conv, "same-key", "hello").await, first);
    assert_eq!(
        other_session.send_message(&conv, "same-key", "hello").await,
        first
    );
    let (status, body) = app
        .post(
            Some(&ada.token),
            &format!("/api/v1/conversations/{conv}/messages"),
            json!({ "client_msg_id": "same-key", "body": "hello" }),
        )
        .await;
    assert_eq!(
        (status, body["message_id"].as_str()),
        (202, Some(first.as_str()))
    );
    // Retries racing the first attempt, before it is stored.
    for _ in 0..5 {
        ws.send(json!({ "type": "send", "client_msg_id": "burst-key", "conversation_id": conv, "body": "burst" })).await;
    }
    let mut ids = HashSet::new();
    for _ in 0..5 {
        ids.insert(
            ws.expect("accepted").await["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "every retry got the same message_id");
    ws.send_message(&conv, "marker", "last").await;
    let live = ws.messages(2).await;
    assert_eq!(
        live[1]["body"], "last",
        "the retries were not delivered again"
    );
    let stored = app.history(&bob, &conv).await;
    let bodies: Vec<&str> = stored.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["hello", "burst", "last"]);
    assert_eq!(seqs(&stored), vec![1, 2, 3]);
}

#[tokio::test]
async fn every_message_frame_is_already_stored() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut sender = app.ws(&ada).await;
    let mut receiver = app.ws(&bob).await;
    for i in 0..30 {
        sender.send(json!({ "type": "send", "client_msg_id": format!("k{i}"), "conversation_id": conv, "body": format!("b{i}") })).await;
    }
    for _ in 0..30 {
        let m = receiver.expect("message").await["message"].clone();
        let seq = m["seq"].as_i64().unwrap();
        let (_, page) = app
            .get(
                &bob.token,
                &format!(
                    "/api/v1/conversations/{conv}/messages?after_seq={}&limit=1",
                    seq - 1
                ),
            )
            .await;
        assert_eq!(
            page["messages"][0], m,
            "the message is durable before anyone sees it"
        );
    }
}

#[tokio::test]
async fn sync_replays_exactly_what_was_missed_and_names_every_conversation() {
    let app = TestApp::spawn().await;
    let (ada, bob, carol) = (
        app.register("ada").await,
        app.register("bob").await,
        app.register("carol").await,
    );
    let direct = app.direct(&ada, &bob).await;
    let group = app.group(&carol, &[&bob]).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut ada_ws = app.ws(&ada).await;
    for i in 0..5 {
        ada_ws
            .send_message(&direct, &format!("before{i}"), &format!("before {i}"))
            .await;
    }
    let seen = bob_ws.messages(5).await;
    let last_seen = seen.last().unwrap()["seq"].as_i64().unwrap();
    bob_ws.close().await;

    for i in 0..30 {
        ada_ws
            .send_message(&direct, &format!("missed{i}"), &format!("missed {i}"))
            .await;
    }
    let mut carol_ws = app.ws(&carol).await;
    carol_ws.send_message(&group, "g1", "in the group").await;
    ada_ws.messages(35).await;
    carol_ws.messages(1).await;

    let mut bob_ws = app.ws(&bob).await;
    bob_ws
        .send(json!({ "type": "sync", "since": { direct.clone(): last_seen } }))
        .await;
    let replay = bob_ws.messages(30).await;
    let bodies: Vec<String> = replay
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        bodies,
        (0..30).map(|i| format!("missed {i}")).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&replay), (6..=35).collect::<Vec<_>>());
    let synced = bob_ws.expect("synced").await;
    assert_eq!(synced["last_seq"][&direct], 35);
    assert_eq!(
        synced["last_seq"][&group], 1,
        "a conversation bob did not name"
    );
    let online: Vec<&str> = synced["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(online.contains(&ada.id.as_str()) && online.contains(&carol.id.as_str()));
    bob_ws
        .assert_none("message", "nothing beyond the gap")
        .await;

    // A sync naming a conversation the user is not in gets an error, then `synced`.
    let mut carol_ws2 = app.ws(&carol).await;
    carol_ws2
        .send(json!({ "type": "sync", "since": { direct.clone(): 0 } }))
        .await;
    assert_eq!(carol_ws2.expect("error").await["code"], "forbidden");
    let synced = carol_ws2.expect("synced").await;
    assert!(synced["last_seq"].get(&direct).is_none());

    // Live delivery goes on after a sync.
    ada_ws.send_message(&direct, "after", "after sync").await;
    assert_eq!(bob_ws.messages(1).await[0]["seq"], 36);
}

#[tokio::test]
async fn one_key_in_two_conversations_is_two_messages() {
    let app = TestApp::spawn().await;
    let (ada, bob, carol) = (
        app.register("ada").await,
        app.register("bob").await,
        app.register("carol").await,
    );
    let with_bob = app.direct(&ada, &bob).await;
    let with_carol = app.direct(&ada, &carol).await;
    let mut ws = app.ws(&ada).await;
    let first = ws.send_message(&with_bob, "k", "to bob").await;
    let second = ws.send_message(&with_carol, "k", "to carol").await;
    assert_ne!(first, second);
    let got = ws.messages(2).await;
    assert_eq!(bodies_of(&got), vec!["to bob", "to carol"]);
    assert_eq!(
        (got[0]["seq"].as_i64(), got[1]["seq"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(app.history(&carol, &with_carol).await, vec![got[1].clone()]);
}

#[tokio::test]
async fn live_frames_before_the_first_sync_are_not_repeated() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut ada_ws = app.ws(&ada).await;
    for i in 0..5 {
        ada_ws
            .send_message(&conv, &format!("old{i}"), &format!("old {i}"))
            .await;
    }
    ada_ws.messages(5).await;
    let mut bob_ws = app.ws(&bob).await;
    ada_ws.send_message(&conv, "live", "live").await;
    assert_eq!(bob_ws.messages(1).await[0]["seq"], 6, "live before sync");
    bob_ws
        .send(json!({ "type": "sync", "since": { conv.clone(): 0 } }))
        .await;
    let replayed = bob_ws.messages(5).await;
    assert_eq!(
        seqs(&replayed),
        vec![1, 2, 3, 4, 5],
        "what was asked for, minus what was sent"
    );
    bob_ws.expect("synced").await;
    bob_ws.assert_none("message", "seq 6 not repeated").await;
}

#[tokio::test]
async fn a_sync_claiming_more_than_is_stored_does_not_hide_new_messages() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut bob_ws = app.ws(&bob).await;
    bob_ws
        .send(json!({ "type": "sync", "since": { conv.clone(): 100 } }))
        .await;
    assert_eq!(bob_ws.expect("synced").await["last_seq"][&conv], 0);
    let mut ada_ws = app.ws(&ada).await;
    ada_ws.send_message(&conv, "k1", "first").await;
    assert_eq!(bob_ws.messages(1).await[0]["seq"], 1);
}

fn bodies_of(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect()
}
