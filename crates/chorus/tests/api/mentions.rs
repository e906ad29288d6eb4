//! Mentions (protocol v1.1 §1, §4): the server finds the members a body names as
//! `@username`; each member's conversations count the mentions after their marker.

use crate::helpers::TestApp;
use serde_json::{Value, json};

#[tokio::test]
async fn members_named_in_a_body_are_mentioned_in_order_once_and_others_are_text() {
    let app = TestApp::spawn().await;
    let (a, b, c, outsider) = (
        app.register("a").await,
        app.register("b").await,
        app.register("c").await,
        app.register("x").await,
    );
    let group = app.group(&a, &[&b, &c]).await;
    let mut ws = app.ws(&a).await;
    let body = format!(
        "@{} and @{}, also @{} and @{}. mail a@{}.com @nobody-here",
        c.username, b.username, c.username, outsider.username, b.username
    );
    ws.send_message(&group, "m", &body).await;
    let live = ws.messages(1).await;
    assert_eq!(
        live[0]["mentions"],
        json!([c.id, b.id]),
        "members only, in order, once each"
    );
    let history = app.history(&b, &group).await;
    assert_eq!(history[0]["mentions"], json!([c.id, b.id]));
    ws.send_message(&group, "n", "no names").await;
    assert_eq!(ws.messages(1).await[0]["mentions"], json!([]));
    // At the end of a sentence.
    ws.send_message(&group, "o", &format!("thanks @{}.", b.username))
        .await;
    assert_eq!(ws.messages(1).await[0]["mentions"], json!([b.id]));
}

fn mentions_unread(conversations: &Value, id: &str) -> i64 {
    conversations["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap()["mentions_unread"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn mentions_after_the_read_marker_are_counted_until_read() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.register("a").await, app.register("b").await);
    let group = app.group(&a, &[&b]).await;
    let mut ws = app.ws(&a).await;
    for (key, body) in [
        ("1", format!("hi @{}", b.username)),
        ("2", "nothing".to_owned()),
        ("3", format!("@{} again", b.username)),
    ] {
        ws.send_message(&group, key, &body).await;
    }
    ws.messages(3).await;
    let (_, list) = app.get(&b.token, "/api/v1/conversations").await;
    assert_eq!(mentions_unread(&list, &group), 2);
    assert_eq!(list["conversations"][0]["unread"], 3);
    let (_, one) = app
        .get(&b.token, &format!("/api/v1/conversations/{group}"))
        .await;
    assert_eq!(one["mentions_unread"], 2);
    let (_, mine) = app
        .get(&a.token, &format!("/api/v1/conversations/{group}"))
        .await;
    assert_eq!(mine["mentions_unread"], 0, "a was not named");

    let mut bws = app.ws(&b).await;
    bws.send(json!({"type": "read", "conversation_id": group, "seq": 1}))
        .await;
    crate::helpers::poll_until("the read marker never moved", || async {
        let (_, one) = app
            .get(&b.token, &format!("/api/v1/conversations/{group}"))
            .await;
        one["mentions_unread"] == 1
    })
    .await;
    bws.send(json!({"type": "read", "conversation_id": group, "seq": 3}))
        .await;
    crate::helpers::poll_until("the read marker never moved", || async {
        let (_, list) = app.get(&b.token, "/api/v1/conversations").await;
        mentions_unread(&list, &group) == 0
    })
    .await;
}

#[tokio::test]
async fn what_scripts_send_mentions_too_and_offline_mentions_are_counted() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.register("a").await, app.register("b").await);
    let direct = app.direct(&a, &b).await;
    // b's script answers naming the sender; b has no session open.
    app.script(
        &b,
        &["incoming"],
        r#"export function onIncoming(msg) { if (msg.mentions.length) return { reply: "yes @" + msg.sender }; }"#,
    )
    .await;
    let mut ws = app.ws(&a).await;
    ws.send_message(&direct, "q", &format!("@{} are you there?", b.username))
        .await;
    ws.messages(1).await;
    let reply = ws.messages(1).await;
    assert_eq!(reply[0]["body"], format!("yes @{}", a.username));
    assert_eq!(
        reply[0]["mentions"],
        json!([a.id]),
        "a script's message mentions too"
    );
    app.wait_for_counter("chorus_mentions_offline_total", 1.0)
        .await;
}
