//! Replies (protocol v1.1 §2, §4): a message may answer an earlier message of its
//! conversation; the answers to a message are listed like history.

use crate::helpers::TestApp;
use serde_json::{Value, json};

#[tokio::test]
async fn a_reply_names_its_original_live_in_history_and_in_the_list_of_answers() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.register("a").await, app.register("b").await);
    let group = app.group(&a, &[&b]).await;
    let mut aws = app.ws(&a).await;
    let mut bws = app.ws(&b).await;
    let original = aws.send_message(&group, "o", "lunch?").await;
    aws.send_message(&group, "x", "unrelated").await;
    // A reply names a stored message: one b has seen.
    bws.messages(2).await;
    bws.send(json!({"type": "send", "client_msg_id": "r1", "conversation_id": group, "body": "yes", "reply_to": original})).await;
    bws.expect("accepted").await;
    let live = aws.message_where(|m| m["client_msg_id"] == "r1").await;
    assert_eq!(live["reply_to"], original.as_str());
    let (status, _) = app
        .post(
            Some(&a.token),
            &format!("/api/v1/conversations/{group}/messages"),
            json!({"client_msg_id": "r2", "body": "me too", "reply_to": original}),
        )
        .await;
    assert_eq!(status, 202);
    app.wait_for_seq(&a, &group, 4).await;

    let history = app.history(&b, &group).await;
    let reply_to: Vec<&Value> = history.iter().map(|m| &m["reply_to"]).collect();
    assert_eq!(
        reply_to,
        [
            &Value::Null,
            &Value::Null,
            &json!(original),
            &json!(original)
        ]
    );
    let (status, answers) = app
        .get(
            &b.token,
            &format!("/api/v1/conversations/{group}/messages?reply_to={original}"),
        )
        .await;
    assert_eq!(status, 200, "{answers}");
    let bodies: Vec<&str> = answers["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["yes", "me too"], "oldest first");
    let (_, paged) = app
        .get(
            &b.token,
            &format!("/api/v1/conversations/{group}/messages?reply_to={original}&after_seq=3"),
        )
        .await;
    assert_eq!(paged["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_reply_to_a_message_of_another_conversation_or_none_is_not_found() {
    let app = TestApp::spawn().await;
    let (a, b, c) = (
        app.register("a").await,
        app.register("b").await,
        app.register("c").await,
    );
    let ab = app.direct(&a, &b).await;
    let ac = app.direct(&a, &c).await;
    let mut ws = app.ws(&a).await;
    let elsewhere = ws.send_message(&ac, "e", "in another conversation").await;
    ws.messages(1).await;
    for (key, target) in [("1", json!(elsewhere)), ("2", json!(uuid::Uuid::now_v7()))] {
        ws.send(json!({"type": "send", "client_msg_id": key, "conversation_id": ab, "body": "re", "reply_to": target})).await;
        let error = ws.expect("error").await;
        assert_eq!(
            (error["code"].as_str(), error["client_msg_id"].as_str()),
            (Some("not_found"), Some(key))
        );
    }
    let (status, body) = app
        .post(
            Some(&a.token),
            &format!("/api/v1/conversations/{ab}/messages"),
            json!({"client_msg_id": "3", "body": "re", "reply_to": elsewhere}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // Nothing was stored, and c's conversation is none of b's business either.
    assert!(app.history(&b, &ab).await.is_empty());
    let (status, _) = app
        .get(
            &b.token,
            &format!("/api/v1/conversations/{ac}/messages?reply_to={elsewhere}"),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn scripts_see_what_a_message_answers() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.register("a").await, app.register("b").await);
    let direct = app.direct(&a, &b).await;
    app.script(
        &b,
        &["incoming"],
        r#"export function onIncoming(msg) { if (msg.reply_to) return { reply: "answers " + msg.reply_to }; }"#,
    )
    .await;
    let mut ws = app.ws(&a).await;
    let first = ws.send_message(&direct, "1", "first").await;
    ws.messages(1).await;
    ws.send(json!({"type": "send", "client_msg_id": "2", "conversation_id": direct, "body": "second", "reply_to": first})).await;
    ws.expect("accepted").await;
    let reply = ws.message_where(|m| m["sender_id"] == b.id.as_str()).await;
    assert_eq!(reply["body"], format!("answers {first}"));
    assert_eq!(
        reply["reply_to"],
        Value::Null,
        "a script's reply answers nothing"
    );
}
