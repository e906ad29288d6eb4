//! The public surface: accounts, conversations, history, errors, bad frames.

use crate::helpers::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn accounts_register_login_and_search() {
    let app = TestApp::spawn().await;
    let ada = app.register("ada").await;
    let (status, me) = app.get(&ada.token, "/api/v1/me").await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], ada.username.as_str());

    let (status, body) = app
        .post(
            None,
            "/api/v1/auth/register",
            json!({ "username": ada.username, "password": "another password" }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );

    for (username, password) in [
        ("x", "long enough"),
        ("bad name!", "long enough"),
        ("okname", "short"),
    ] {
        let (status, body) = app
            .post(
                None,
                "/api/v1/auth/register",
                json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request"))
        );
    }

    let (status, body) = app
        .post(
            None,
            "/api/v1/auth/login",
            json!({ "username": ada.username, "password": "correct horse" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["user"]["id"], ada.id.as_str());
    let (status, body) = app
        .post(
            None,
            "/api/v1/auth/login",
            json!({ "username": ada.username, "password": "wrong horse" }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    let prefix = &ada.username[..5];
    let (status, body) = app
        .get(&ada.token, &format!("/api/v1/users?query={prefix}"))
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert!(names.contains(&ada.username.as_str()));
    assert!(names.iter().all(|n| n.starts_with(prefix)));
}

#[tokio::test]
async fn a_user_is_read_by_id() {
    let app = TestApp::spawn().await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let (status, body) = app
        .get(&ada.token, &format!("/api/v1/users/{}", bob.id))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["id"].as_str(), body["username"].as_str()),
        (Some(bob.id.as_str()), Some(bob.username.as_str()))
    );
    let unknown = uuid::Uuid::now_v7();
    let (status, body) = app
        .get(&ada.token, &format!("/api/v1/users/{unknown}"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = app.get(&ada.token, "/api/v1/users/not-an-id").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, _) = app.get("", &format!("/api/v1/users/{}", bob.id)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn bad_tokens_are_unauthorized_on_http_and_websocket() {
    let app = TestApp::spawn().await;
    let ada = app.register("ada").await;
    let forged = format!("{}x", ada.token);
    for token in ["", "garbage", forged.as_str()] {
        let (status, body) = app.get(token, "/api/v1/me").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
        let url = format!("ws://{}/api/v1/ws?token={token}", app.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("upgrade with a bad token must fail with 401: {other:?}"),
        }
    }
    let r = app.http.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token at all");
    // Refused before its body was read: the client is told not to reuse the connection.
    let r = app
        .http
        .post(app.url("/api/v1/conversations"))
        .json(&json!({ "kind": "group", "title": "t", "members": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["connection"], "close");
}

#[tokio::test]
async fn direct_conversations_are_one_per_pair() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let (s1, c1) = app
        .post(
            Some(&ada.token),
            "/api/v1/conversations",
            json!({ "kind": "direct", "members": [bob.id] }),
        )
        .await;
    let (s2, c2) = app
        .post(
            Some(&bob.token),
            "/api/v1/conversations",
            json!({ "kind": "direct", "members": [ada.id] }),
        )
        .await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(c1["id"], c2["id"]);
    assert_eq!(c1["kind"], "direct");
    let members = c1["members"].as_array().unwrap();
    assert!(members.contains(&json!(ada.id)) && members.contains(&json!(bob.id)));

    let (status, body) = app
        .post(
            Some(&ada.token),
            "/api/v1/conversations",
            json!({ "kind": "direct", "members": [ada.id] }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let ghost = uuid::Uuid::now_v7().to_string();
    let (status, _) = app
        .post(
            Some(&ada.token),
            "/api/v1/conversations",
            json!({ "kind": "direct", "members": [ghost] }),
        )
        .await;
    assert_eq!(status, 404);
    let id = c1["id"].as_str().unwrap();
    let carol = app.register("carol").await;
    let (status, _) = app
        .post(
            Some(&ada.token),
            &format!("/api/v1/conversations/{id}/members"),
            json!({ "user_id": carol.id }),
        )
        .await;
    assert_eq!(status, 400, "direct members are fixed");
}

#[tokio::test]
async fn groups_have_an_owner_who_manages_members() {
    let app = TestApp::spawn().await;
    let (ada, bob, carol, dan) = (
        app.register("ada").await,
        app.register("bob").await,
        app.register("carol").await,
        app.register("dan").await,
    );
    let id = app.group(&ada, &[&bob]).await;
    let members_path = format!("/api/v1/conversations/{id}/members");

    let (status, body) = app
        .post(
            Some(&bob.token),
            &members_path,
            json!({ "user_id": carol.id }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, body) = app
        .post(
            Some(&ada.token),
            &members_path,
            json!({ "user_id": carol.id }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["members"].as_array().unwrap().len(), 3);

    let (status, _) = app
        .get(&dan.token, &format!("/api/v1/conversations/{id}"))
        .await;
    assert_eq!(status, 403, "non-members cannot read the conversation");
    let (status, _) = app
        .get(&dan.token, &format!("/api/v1/conversations/{id}/messages"))
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .post(
            Some(&dan.token),
            &format!("/api/v1/conversations/{id}/messages"),
            json!({ "client_msg_id": "x", "body": "hi" }),
        )
        .await;
    assert_eq!(status, 403);

    let (status, _) = app
        .delete(&bob.token, &format!("{members_path}/{}", carol.id))
        .await;
    assert_eq!(status, 403, "members remove only themselves");
    let (status, _) = app
        .delete(&bob.token, &format!("{members_path}/{}", bob.id))
        .await;
    assert_eq!(status, 204, "a member may leave");
    let (status, _) = app
        .delete(&ada.token, &format!("{members_path}/{}", carol.id))
        .await;
    assert_eq!(status, 204, "the owner removes anyone");
    let (status, _) = app
        .get(&carol.token, &format!("/api/v1/conversations/{id}"))
        .await;
    assert_eq!(status, 403, "a removed member loses access");

    let (_, list) = app.get(&ada.token, "/api/v1/conversations").await;
    let ids: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);

    let missing = uuid::Uuid::now_v7();
    let (status, body) = app
        .get(&ada.token, &format!("/api/v1/conversations/{missing}"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = app
        .get(&ada.token, "/api/v1/conversations/not-a-uuid")
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test]
async fn history_pages_by_seq_in_both_directions() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut ws = app.ws(&ada).await;
    for i in 1..=120 {
        ws.send_message(&conv, &format!("m{i}"), &format!("message {i}"))
            .await;
    }
    let got = ws.messages(120).await;
    assert_eq!(got.last().unwrap()["seq"], 120);

    let seqs = |body: &serde_json::Value| -> Vec<i64> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    };
    let base = format!("/api/v1/conversations/{conv}/messages");
    let (_, latest) = app.get(&bob.token, &base).await;
    assert_eq!(
        seqs(&latest),
        (71..=120).collect::<Vec<_>>(),
        "default: the latest 50, ascending"
    );
    let (_, older) = app
        .get(&bob.token, &format!("{base}?before_seq=71&limit=30"))
        .await;
    assert_eq!(seqs(&older), (41..=70).collect::<Vec<_>>());
    let (_, first) = app
        .get(&bob.token, &format!("{base}?after_seq=0&limit=10"))
        .await;
    assert_eq!(seqs(&first), (1..=10).collect::<Vec<_>>());
    let (_, window) = app
        .get(&bob.token, &format!("{base}?after_seq=10&before_seq=15"))
        .await;
    assert_eq!(seqs(&window), vec![11, 12, 13, 14]);
    let (_, clamped) = app
        .get(&bob.token, &format!("{base}?after_seq=0&limit=100000"))
        .await;
    assert_eq!(seqs(&clamped).len(), 120);
    for bad in ["limit=0", "limit=-1", "limit=abc", "after_seq=-5"] {
        let (status, body) = app.get(&bob.token, &format!("{base}?{bad}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (_, list) = app.get(&bob.token, "/api/v1/conversations").await;
    let c = &list["conversations"][0];
    assert_eq!(
        (c["last_seq"].as_i64(), c["unread"].as_i64()),
        (Some(120), Some(120))
    );
}

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_stays_open() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut ws = app.ws(&ada).await;

    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{not json".into()), "bad_request"),
        (Message::Text(r#"{"no_type":1}"#.into()), "bad_request"),
        (Message::Text(r#"{"type":"dance"}"#.into()), "unknown_type"),
        (
            Message::Text(r#"{"type":"send","body":"x"}"#.into()),
            "bad_request",
        ),
        (Message::Binary(vec![1, 2, 3].into()), "bad_request"),
        (
            Message::Text(
                format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(100 * 1024)).into(),
            ),
            "too_large",
        ),
    ];
    for (frame, code) in cases {
        ws.send_raw(frame).await;
        let err = ws.expect("error").await;
        assert_eq!(err["code"], code, "{err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(json!({ "type": "send", "client_msg_id": "big", "conversation_id": conv, "body": "x".repeat(20 * 1024) }))
        .await;
    let err = ws.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), err["client_msg_id"].as_str()),
        (Some("too_large"), Some("big"))
    );
    ws.send(
        json!({ "type": "send", "client_msg_id": "empty", "conversation_id": conv, "body": "" }),
    )
    .await;
    assert_eq!(ws.expect("error").await["code"], "bad_request");
    // JSON allows \u0000; PostgreSQL text does not: refused at the edge.
    ws.send(json!({ "type": "send", "client_msg_id": "nul", "conversation_id": conv, "body": "a\u{0}b" }))
        .await;
    let err = ws.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), err["client_msg_id"].as_str()),
        (Some("bad_request"), Some("nul"))
    );

    let carol = app.register("carol").await;
    let mut outsider = app.ws(&carol).await;
    outsider.send(json!({ "type": "send", "client_msg_id": "nope", "conversation_id": conv, "body": "hi" })).await;
    let err = outsider.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), err["client_msg_id"].as_str()),
        (Some("forbidden"), Some("nope"))
    );
    outsider
        .send(json!({ "type": "typing", "conversation_id": conv }))
        .await;
    assert_eq!(outsider.expect("error").await["code"], "forbidden");
    outsider
        .send(json!({ "type": "read", "conversation_id": conv, "seq": 1 }))
        .await;
    assert_eq!(outsider.expect("error").await["code"], "forbidden");

    // Still open and working after all of that.
    ws.send(json!({ "type": "ping", "nonce": 42 })).await;
    assert_eq!(ws.expect("pong").await["nonce"], 42);
    ws.send_message(&conv, "after-errors", "still here").await;
    assert_eq!(ws.messages(1).await[0]["body"], "still here");
}

#[tokio::test]
async fn sends_over_the_rate_limit_are_refused_with_retry_after() {
    let app = TestApp::spawn_with(|c| {
        c.limits.rate_per_sec = 5;
        c.limits.rate_burst = 10;
    })
    .await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut ws = app.ws(&ada).await;
    for i in 0..20 {
        ws.send(json!({ "type": "send", "client_msg_id": format!("r{i}"), "conversation_id": conv, "body": "hi" }))
            .await;
    }
    let (mut accepted, mut limited) = (0, 0);
    while accepted + limited < 20 {
        let frame = ws.next().await;
        match frame["type"].as_str().unwrap() {
            "accepted" => accepted += 1,
            "error" => {
                assert_eq!(frame["code"], "rate_limited");
                assert!(frame["retry_after_ms"].as_u64().unwrap() > 0);
                assert!(frame["client_msg_id"].as_str().unwrap().starts_with('r'));
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(
        (10..=12).contains(&accepted),
        "the burst passes: {accepted}"
    );
    assert!(limited >= 8);
    let (status, body) = app
        .post(
            Some(&ada.token),
            &format!("/api/v1/conversations/{conv}/messages"),
            json!({ "client_msg_id": "http", "body": "hi" }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(body["error"]["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn typing_read_and_presence_reach_the_other_members() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut a1 = app.ws(&ada).await;
    let mut b = app.ws(&bob).await;
    let p = a1.expect("presence").await;
    assert_eq!(
        (p["user_id"].as_str(), p["online"].as_bool()),
        (Some(bob.id.as_str()), Some(true))
    );

    b.send(json!({ "type": "typing", "conversation_id": conv }))
        .await;
    let t = a1.expect("typing").await;
    assert_eq!(
        (t["conversation_id"].as_str(), t["user_id"].as_str()),
        (Some(conv.as_str()), Some(bob.id.as_str()))
    );
    b.assert_none("typing", "no echo of one's own typing").await;

    let mut a2 = app.ws(&ada).await;
    a1.send_message(&conv, "m1", "one").await;
    a1.send_message(&conv, "m2", "two").await;
    b.messages(2).await;
    a2.messages(2).await;
    b.send(json!({ "type": "read", "conversation_id": conv, "seq": 2 }))
        .await;
    let r = a1.expect("read").await;
    assert_eq!(
        (r["user_id"].as_str(), r["seq"].as_i64()),
        (Some(bob.id.as_str()), Some(2))
    );
    let (_, list) = app.get(&bob.token, "/api/v1/conversations").await;
    assert_eq!(list["conversations"][0]["unread"], 0);
    let (_, list) = app.get(&ada.token, "/api/v1/conversations").await;
    assert_eq!(list["conversations"][0]["unread"], 2, "ada has not read");

    a2.send(json!({ "type": "read", "conversation_id": conv, "seq": 1 }))
        .await;
    let r = a1.expect("read").await;
    assert_eq!(
        (r["user_id"].as_str(), r["seq"].as_i64()),
        (Some(ada.id.as_str()), Some(1)),
        "own other session told"
    );

    b.close().await;
    let p = a1.expect("presence").await;
    assert_eq!(
        (p["user_id"].as_str(), p["online"].as_bool()),
        (Some(bob.id.as_str()), Some(false))
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "ok");
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut ws = app.ws(&ada).await;
    ws.send_message(&conv, "m", "counted").await;
    ws.messages(1).await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    for name in [
        "chorus_messages_accepted_total",
        "chorus_messages_stored_total",
        "chorus_stage_events_total",
        "chorus_ws_connections",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing");
    }
    let r = app.http.get(app.url("/")).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("chorus"));
}
