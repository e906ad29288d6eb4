//! Users' scripts and auto-replies, end to end: uploaded over HTTP, run by the
//! automation stages, seen by WebSocket clients.

use crate::helpers::*;
use serde_json::{Value, json};

/// Sends a marker as `user` and returns its `seq` once stored: every message that
/// was on its way to `conversation` before it has a smaller `seq` (one partition per
/// conversation keeps them in order), so nothing else is in flight behind it.
async fn settle(ws: &mut WsClient, conversation: &str, key: &str) -> i64 {
    ws.send_message(conversation, key, "marker").await;
    let m = ws.message_where(|m| m["client_msg_id"] == key).await;
    m["seq"].as_i64().unwrap()
}

#[tokio::test]
async fn scripts_are_created_read_changed_and_deleted_by_their_owner_only() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let created = app
        .script(&ada, &["incoming"], "export function onIncoming(msg) {}")
        .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["enabled"], true);
    assert_eq!(created["version"], 1);
    assert_eq!(created["runs"], 0);
    assert_eq!(created["memory_bytes"], 4 * 1024 * 1024);
    assert_eq!(created["cpu_ms"], 10);

    let (status, list) = app.get(&ada.token, "/api/v1/scripts").await;
    assert_eq!(status, 200);
    assert_eq!(list["scripts"].as_array().unwrap().len(), 1);
    let path = format!("/api/v1/scripts/{id}");
    for (status, body) in [
        app.get(&bob.token, &path).await,
        app.put(&bob.token, &path, json!({ "name": "mine now" }))
            .await,
        app.delete(&bob.token, &path).await,
        app.post(
            Some(&bob.token),
            &format!("{path}/test"),
            json!({ "message": { "body": "x" } }),
        )
        .await,
    ] {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found"))
        );
    }
    let (_, list) = app.get(&bob.token, "/api/v1/scripts").await;
    assert_eq!(list["scripts"], json!([]));

    let (status, changed) = app
        .put(
            &ada.token,
            &path,
            json!({ "name": "renamed", "enabled": false, "cpu_ms": 50 }),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (
            &changed["name"],
            &changed["enabled"],
            &changed["version"],
            &changed["cpu_ms"]
        ),
        (&json!("renamed"), &json!(false), &json!(2), &json!(50))
    );
    let (_, read) = app.get(&ada.token, &path).await;
    assert_eq!(read, changed);
    let (status, body) = app
        .put(&ada.token, &path, json!({ "cpu_ms": 1_000_000 }))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    let (status, _) = app.delete(&ada.token, &path).await;
    assert_eq!(status, 204);
    assert_eq!(app.get(&ada.token, &path).await.0, 404);
}

#[tokio::test]
async fn a_script_that_does_not_compile_is_refused_with_line_and_column() {
    let app = TestApp::spawn().await;
    let ada = app.register("ada").await;
    let post = |body: Value| app.post(Some(&ada.token), "/api/v1/scripts", body);
    let (status, body) = post(json!({
        "name": "broken",
        "hooks": ["incoming"],
        "source": "export function onIncoming(msg) {\n  return {reply: 'x'\n}\n",
    }))
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(body["error"]["line"].as_u64().is_some(), "{body}");
    assert!(body["error"]["column"].as_u64().is_some(), "{body}");

    let (status, body) = post(json!({
        "name": "wrong hook",
        "hooks": ["outgoing"],
        "source": "export function onIncoming(msg) {}",
    }))
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("onOutgoing"),
        "{body}"
    );
    for bad in [
        json!({ "name": "no hooks", "hooks": [], "source": "export function onIncoming() {}" }),
        json!({ "name": "odd hook", "hooks": ["sideways"], "source": "" }),
        json!({ "hooks": ["incoming"], "source": "export function onIncoming() {}" }),
        json!({ "name": "importer", "hooks": ["incoming"], "source": "import * as os from 'os'; export function onIncoming() {}" }),
    ] {
        let (status, body) = post(bad).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
    }
    let (_, list) = app.get(&ada.token, "/api/v1/scripts").await;
    assert_eq!(list["scripts"], json!([]), "nothing refused was stored");
}

#[tokio::test]
async fn the_dry_run_returns_actions_and_logs_and_keeps_no_state() {
    let app = TestApp::spawn().await;
    let ada = app.register("ada").await;
    let script = app
        .script(
            &ada,
            &["incoming", "outgoing"],
            r#"
            export function onIncoming(msg, ctx) {
                const seen = (ctx.kv.get("seen") ?? 0) + 1;
                ctx.kv.set("seen", seen);
                ctx.log("from", msg.sender, "seen", seen);
                return [{ reply: "hi " + msg.sender }, { forward: "0190b4a4-6a35-7c3e-9d0e-1f7a6a1b2c3d" }];
            }
            export function onOutgoing(msg) { return { rewrite: msg.body.toUpperCase() }; }
            export function onThrow() {}
            "#,
        )
        .await;
    let path = format!("/api/v1/scripts/{}/test", script["id"].as_str().unwrap());
    for _ in 0..2 {
        let (status, run) = app
            .post(
                Some(&ada.token),
                &path,
                json!({ "hook": "incoming", "message": { "body": "hello", "sender": "bob" } }),
            )
            .await;
        assert_eq!(status, 200, "{run}");
        assert_eq!(
            run["actions"],
            json!([{ "reply": "hi bob" }, { "forward": "0190b4a4-6a35-7c3e-9d0e-1f7a6a1b2c3d" }])
        );
        assert_eq!(
            run["logs"],
            json!(["from bob seen 1"]),
            "a dry run's kv writes are not kept"
        );
        assert!(run["elapsed_us"].as_u64().is_some());
        assert_eq!(run["error"], Value::Null);
    }
    let (_, run) = app
        .post(
            Some(&ada.token),
            &path,
            json!({ "hook": "outgoing", "message": { "body": "quiet" } }),
        )
        .await;
    assert_eq!(run["actions"], json!([{ "rewrite": "QUIET" }]));
}

#[tokio::test]
async fn outgoing_scripts_rewrite_reply_forward_and_block() {
    let app = TestApp::spawn().await;
    let (ada, bob, cy) = (
        app.register("ada").await,
        app.register("bob").await,
        app.register("cy").await,
    );
    let chat = app.direct(&ada, &bob).await;
    let archive = app.direct(&ada, &cy).await;
    app.script(
        &ada,
        &["outgoing"],
        &format!(
            r#"
            export function onOutgoing(msg) {{
                if (msg.body.includes("secret")) return {{ drop: "no secrets here" }};
                if (msg.body === "shout") return {{ rewrite: "SHOUT" }};
                if (msg.body === "ping") return {{ reply: "auto: pong" }};
                if (msg.body === "keep") return {{ forward: "{archive}" }};
            }}
            "#
        ),
    )
    .await;
    let mut ada_ws = app.ws(&ada).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut cy_ws = app.ws(&cy).await;

    ada_ws.send_message(&chat, "1", "shout").await;
    let m = bob_ws.messages(1).await.remove(0);
    assert_eq!(
        (m["body"].as_str(), m["origin"].as_str()),
        (Some("SHOUT"), Some("user"))
    );

    ada_ws.send_message(&chat, "2", "ping").await;
    let got = bob_ws.messages(2).await;
    assert_eq!(got[0]["body"], "ping");
    assert_eq!(
        (
            got[1]["body"].as_str(),
            got[1]["origin"].as_str(),
            got[1]["sender_id"].as_str()
        ),
        (Some("auto: pong"), Some("script"), Some(ada.id.as_str()))
    );

    ada_ws.send_message(&chat, "3", "keep").await;
    assert_eq!(bob_ws.messages(1).await[0]["body"], "keep");
    let copy = cy_ws.messages(1).await.remove(0);
    assert_eq!(
        (
            copy["body"].as_str(),
            copy["conversation_id"].as_str(),
            copy["origin"].as_str()
        ),
        (Some("keep"), Some(archive.as_str()), Some("script"))
    );

    ada_ws.send_message(&chat, "4", "the secret plan").await;
    let error = ada_ws.expect("error").await;
    assert_eq!(
        (
            error["code"].as_str(),
            error["client_msg_id"].as_str(),
            error["message"].as_str()
        ),
        (Some("blocked"), Some("4"), Some("no secrets here"))
    );
    let last = settle(&mut ada_ws, &chat, "5").await;
    let bodies: Vec<String> = app
        .history(&ada, &chat)
        .await
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["SHOUT", "ping", "auto: pong", "keep", "marker"]);
    assert_eq!(last, 5, "the blocked message was never stored");
    assert!(
        !bob_ws
            .barrier()
            .await
            .iter()
            .any(|f| f["message"]["body"] == "the secret plan"),
        "bob never saw the blocked message"
    );
}

#[tokio::test]
async fn incoming_scripts_drop_for_their_owner_only_reply_and_keep_state() {
    let app = TestApp::spawn().await;
    let (ada, bob, cy) = (
        app.register("ada").await,
        app.register("bob").await,
        app.register("cy").await,
    );
    let group = app.group(&ada, &[&bob, &cy]).await;
    let script = app
        .script(
            &bob,
            &["incoming"],
            r#"
            export function onIncoming(msg, ctx) {
                if (msg.body.startsWith("spam")) return { drop: "spam" };
                const n = (ctx.kv.get("count") ?? 0) + 1;
                ctx.kv.set("count", n);
                ctx.log("message", n, "from", msg.sender);
                if (msg.body === "how many?") return { reply: "bob's bot counted " + n };
            }
            "#,
        )
        .await;
    let mut ada_ws = app.ws(&ada).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut cy_ws = app.ws(&cy).await;

    // Bob has seen a message of the conversation before the dropped one, so the gap
    // the drop leaves in his `seq`s must not be filled from the store either.
    ada_ws.send_message(&group, "0", "before").await;
    assert_eq!(bob_ws.messages(1).await[0]["body"], "before");
    ada_ws.send_message(&group, "1", "spam spam").await;
    ada_ws.send_message(&group, "2", "hello").await;
    ada_ws.send_message(&group, "3", "how many?").await;
    let seen_by_cy: Vec<Value> = cy_ws.messages(5).await;
    assert_eq!(
        seen_by_cy
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "before",
            "spam spam",
            "hello",
            "how many?",
            "bob's bot counted 3"
        ]
    );
    assert_eq!(seen_by_cy[4]["origin"], "script");
    assert_eq!(seen_by_cy[4]["sender_id"], bob.id.as_str());
    let seen_by_bob: Vec<Value> = bob_ws.messages(3).await;
    assert_eq!(
        seen_by_bob
            .iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["hello", "how many?", "bob's bot counted 3"],
        "the dropped message never reached bob live"
    );
    let (_, history) = app
        .get(
            &bob.token,
            &format!("/api/v1/conversations/{group}/messages"),
        )
        .await;
    assert!(
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["body"] == "spam spam"),
        "the conversation's history keeps it: {history}"
    );
    let (_, status) = app
        .get(
            &bob.token,
            &format!("/api/v1/scripts/{}", script["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status["runs"], 4);
    assert_eq!(status["failures"], 0);
    assert_eq!(
        status["last_logs"],
        json!([format!("message 3 from {}", ada.username)])
    );
}

#[tokio::test]
async fn runaway_scripts_are_stopped_delivery_goes_on_and_they_are_disabled() {
    let app = TestApp::spawn_with(|c| c.automation.disable_after_failures = 3).await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let chat = app.direct(&ada, &bob).await;
    let looping = app
        .script(
            &bob,
            &["incoming"],
            "export function onIncoming() { for (;;) { try { while (true) {} } catch (e) {} } }",
        )
        .await;
    let bomb = app
        .script(
            &bob,
            &["incoming"],
            "export function onIncoming() { const a = []; for (;;) a.push(new Array(1e5).fill(1)); }",
        )
        .await;
    let thrower = app
        .script(
            &bob,
            &["incoming"],
            "export function onIncoming() { throw 42; }",
        )
        .await;
    let mut ada_ws = app.ws(&ada).await;
    let mut bob_ws = app.ws(&bob).await;
    for i in 0..3 {
        ada_ws
            .send_message(&chat, &i.to_string(), &format!("message {i}"))
            .await;
    }
    let got = bob_ws.messages(3).await;
    assert_eq!(
        got.iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["message 0", "message 1", "message 2"],
        "failing incoming scripts leave delivery alone"
    );
    let mut notices = Vec::new();
    while notices.len() < 3 {
        notices.push(bob_ws.expect("notice").await);
    }
    assert!(notices.iter().all(|n| n["kind"] == "script_disabled"));
    for (script, code) in [
        (&looping, "timeout"),
        (&bomb, "out_of_memory"),
        (&thrower, "thrown"),
    ] {
        let id = script["id"].as_str().unwrap();
        assert!(notices.iter().any(|n| n["script_id"] == id), "{notices:?}");
        let (_, s) = app.get(&bob.token, &format!("/api/v1/scripts/{id}")).await;
        assert_eq!(s["enabled"], false, "{s}");
        assert_eq!(
            (s["runs"].as_i64(), s["failures"].as_i64()),
            (Some(3), Some(3)),
            "{s}"
        );
        assert_eq!(s["last_error"]["code"], code, "{s}");
        assert!(
            s["disabled_reason"]
                .as_str()
                .unwrap()
                .contains("3 failed runs"),
            "{s}"
        );
    }
    // Disabled scripts run no more.
    let marker = settle(&mut ada_ws, &chat, "after").await;
    assert_eq!(marker, 4);
    let (_, s) = app
        .get(
            &bob.token,
            &format!("/api/v1/scripts/{}", thrower["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(s["runs"], 3);
    // Its owner enables it again: a fresh start.
    let (_, s) = app
        .put(
            &bob.token,
            &format!("/api/v1/scripts/{}", thrower["id"].as_str().unwrap()),
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(
        (&s["enabled"], &s["disabled_reason"]),
        (&json!(true), &Value::Null)
    );
}

#[tokio::test]
async fn a_fail_closed_outgoing_script_blocks_when_it_fails() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let chat = app.direct(&ada, &bob).await;
    let (status, body) = app
        .post(
            Some(&ada.token),
            "/api/v1/scripts",
            json!({
                "name": "strict filter",
                "hooks": ["outgoing"],
                "fail_closed": true,
                "source": "export function onOutgoing(msg) { if (msg.body === 'odd') null.boom; }",
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut ada_ws = app.ws(&ada).await;
    ada_ws.send_message(&chat, "1", "odd").await;
    let error = ada_ws.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["client_msg_id"].as_str()),
        (Some("blocked"), Some("1"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("fail-closed"),
        "{error}"
    );
    ada_ws.send_message(&chat, "2", "even").await;
    let m = ada_ws.messages(1).await.remove(0);
    assert_eq!(
        (m["body"].as_str(), m["seq"].as_i64()),
        (Some("even"), Some(1))
    );
}

#[tokio::test]
async fn auto_reply_answers_once_per_window_and_never_automation() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let (status, body) = app.get(&bob.token, "/api/v1/settings/auto-reply").await;
    assert_eq!(
        (status, body),
        (200, json!({ "enabled": false, "text": "" }))
    );
    let (status, body) = app
        .put(
            &bob.token,
            "/api/v1/settings/auto-reply",
            json!({ "enabled": true, "text": "" }),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    for user in [&ada, &bob] {
        let (status, body) = app
            .put(
                &user.token,
                "/api/v1/settings/auto-reply",
                json!({ "enabled": true, "text": format!("{} is away", user.username) }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let chat = app.direct(&ada, &bob).await;
    let mut ada_ws = app.ws(&ada).await;
    ada_ws.send_message(&chat, "1", "are you there?").await;
    ada_ws.send_message(&chat, "2", "hello?").await;
    let got = ada_ws.messages(3).await;
    let mut bodies: Vec<(&str, &str)> = got
        .iter()
        .map(|m| (m["body"].as_str().unwrap(), m["origin"].as_str().unwrap()))
        .collect();
    bodies.sort();
    let away = format!("{} is away", bob.username);
    let mut expected = vec![
        ("are you there?", "user"),
        ("hello?", "user"),
        (away.as_str(), "auto_reply"),
    ];
    expected.sort();
    assert_eq!(bodies, expected);
    // Ada's own auto-reply does not answer Bob's auto-reply, and Bob answers once.
    let marker = settle(&mut ada_ws, &chat, "3").await;
    assert_eq!(
        marker, 4,
        "no auto-reply loop and one auto-reply per window"
    );

    let (status, body) = app
        .put(
            &bob.token,
            "/api/v1/settings/auto-reply",
            json!({ "enabled": false, "text": "x" }),
        )
        .await;
    assert_eq!((status, &body["enabled"]), (200, &json!(false)));
    assert_eq!(
        app.get(&bob.token, "/api/v1/settings/auto-reply").await.1,
        body
    );
}

#[tokio::test]
async fn two_reply_bots_stop_after_the_hop_limit() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let chat = app.direct(&ada, &bob).await;
    for user in [&ada, &bob] {
        app.script(
            user,
            &["incoming"],
            "export function onIncoming(msg) { if (msg.body !== 'marker') return { reply: 're: ' + msg.body }; }",
        )
        .await;
    }
    let mut ada_ws = app.ws(&ada).await;
    ada_ws.send_message(&chat, "1", "hi").await;
    // hi (hops 0) -> bob's bot (1) -> ada's bot (2) -> bob's bot (3), then the chain ends.
    let got = ada_ws.messages(4).await;
    assert_eq!(
        got.iter()
            .map(|m| m["body"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["hi", "re: hi", "re: re: hi", "re: re: re: hi"]
    );
    assert_eq!(
        settle(&mut ada_ws, &chat, "2").await,
        5,
        "nothing after the fourth"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_with_scripts_at_once() {
    use chorus_core::model::{Hook, Script};
    use chorus_store::{AutomationStore, Store};
    const BOTS: usize = 1000;
    let data_dir = tempfile::tempdir().unwrap();
    let config = test_config(data_dir.path());
    // Users, scripts and the group go straight into the database before the node
    // starts (a thousand sign-ups would only measure password hashing).
    let store = chorus_store::sqlite::SqliteStore::open(&data_dir.path().join("chorus.db"))
        .await
        .unwrap();
    let hash = chorus_gateway::auth::Hashing::new(1, 0)
        .hash("correct horse".into())
        .await
        .unwrap();
    let sender = store.create_user("sender", &hash).await.unwrap();
    let now =
        chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis()).unwrap();
    let mut bots = Vec::with_capacity(BOTS);
    for i in 0..BOTS {
        let user = store
            .create_user(&format!("bot{i:04}"), &hash)
            .await
            .unwrap();
        store
            .create_script(&Script {
                id: chorus_core::ScriptId::new(),
                owner_id: user.id,
                name: format!("bot {i}"),
                source: format!(
                    "let n = 0;\n\
                     export function onIncoming(msg, ctx) {{\n\
                       n++;\n\
                       ctx.kv.set('last', msg.body);\n\
                       if (msg.body === 'hello' && {i} % 100 === 0) return {{ reply: 'bot {i} saw ' + n }};\n\
                     }}"
                ),
                hooks: vec![Hook::Incoming],
                enabled: true,
                fail_closed: false,
                memory_bytes: 4 << 20,
                cpu_ms: 200,
                version: 1,
                runs: 0,
                failures: 0,
                consecutive_failures: 0,
                last_error: None,
                last_logs: Vec::new(),
                disabled_reason: None,
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
        bots.push(user.id);
    }
    let group = store
        .create_group(sender.id, "everyone", &bots)
        .await
        .unwrap();
    drop(store);

    let app = TestApp::start(config, data_dir).await;
    let (_, login) = app
        .post(
            None,
            "/api/v1/auth/login",
            json!({ "username": "sender", "password": "correct horse" }),
        )
        .await;
    let token = login["token"].as_str().unwrap();
    let mut ws = WsClient::connect(app.addr, token).await;
    let group = group.id.to_string();
    ws.send_message(&group, "hello", "hello").await;
    let got = ws.messages(1 + BOTS / 100).await;
    let mut replies: Vec<&str> = got[1..]
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    replies.sort();
    let expected: Vec<String> = (0..BOTS)
        .step_by(100)
        .map(|i| format!("bot {i} saw 1"))
        .collect();
    assert_eq!(replies, expected);
    assert_eq!(
        settle(&mut ws, &group, "marker").await,
        2 + (BOTS / 100) as i64
    );
    let data_dir = app.stop().await;

    let store = chorus_store::sqlite::SqliteStore::open(&data_dir.path().join("chorus.db"))
        .await
        .unwrap();
    let mut runs = 0;
    for bot in &bots {
        for s in store.scripts_of(*bot).await.unwrap() {
            assert_eq!((s.failures, s.enabled), (0, true), "{:?}", s.last_error);
            runs += s.runs;
            assert_eq!(
                store.kv_get(s.id, "last").await.unwrap().as_deref(),
                Some("\"marker\"")
            );
        }
    }
    // Every bot saw "hello" and the marker, and every reply but its own.
    let replies = (BOTS / 100) as i64;
    assert_eq!(runs, 2 * BOTS as i64 + replies * (BOTS as i64 - 1));
}

/// Two users whose incoming scripts each answer every message with ten replies: without
/// a bound on breadth, one message became 1 + 10 + 100 + 1000 stored messages within
/// `max_hops`. The trigger's fan-out budget (20) lets bob's bot send its ten replies,
/// each with one message of budget left, so ada's bot answers each once, and there
/// it ends: 21 messages.
#[tokio::test]
async fn scripts_answering_each_other_tenfold_stay_within_the_fanout_budget() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let chat = app.direct(&ada, &bob).await;
    for user in [&ada, &bob] {
        app.script(
            user,
            &["incoming"],
            "export function onIncoming(msg) {
               if (msg.body === 'marker') return;
               return Array.from({ length: 10 }, (_, i) => ({ reply: msg.body + '.' + i }));
             }",
        )
        .await;
    }
    let mut ada_ws = app.ws(&ada).await;
    ada_ws.send_message(&chat, "1", "go").await;
    let got = ada_ws.messages(21).await;
    let generation = |m: &Value| m["body"].as_str().unwrap().matches('.').count();
    let counts = got.iter().fold([0; 3], |mut counts, m| {
        counts[generation(m)] += 1;
        counts
    });
    assert_eq!(
        counts,
        [1, 10, 10],
        "the message, bob's ten, one answer to each"
    );
    assert_eq!(
        settle(&mut ada_ws, &chat, "2").await,
        22,
        "nothing after the twenty-first"
    );
    let (_, scripts) = app.get(&ada.token, "/api/v1/scripts").await;
    let logs = &scripts["scripts"][0]["last_logs"];
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("automation.fanout_budget")),
        "the owner learns why: {logs}"
    );
}

#[tokio::test]
async fn what_scripts_send_counts_against_their_owners_send_rate() {
    let app = TestApp::spawn_with(|c| {
        c.limits.rate_per_sec = 1;
        c.limits.rate_burst = 5;
        c.automation.fanout_budget = 100;
    })
    .await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let chat = app.direct(&ada, &bob).await;
    app.script(
        &bob,
        &["incoming"],
        "export function onIncoming(msg) {
           if (msg.body === 'go') return Array.from({ length: 10 }, (_, i) => ({ reply: 'r' + i }));
         }",
    )
    .await;
    let mut ada_ws = app.ws(&ada).await;
    ada_ws.send_message(&chat, "1", "go").await;
    let got = ada_ws.messages(6).await;
    assert!(got[1..].iter().all(|m| m["sender_id"] == bob.id.as_str()));
    // The run's counts are stored before its replies go out, and before the marker
    // below runs the script again (with nothing to say).
    let (_, scripts) = app.get(&bob.token, "/api/v1/scripts").await;
    let logs = &scripts["scripts"][0]["last_logs"];
    assert!(
        logs.as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("over your send rate")),
        "{logs}"
    );
    // Ten asked for, five in bob's burst: the rest waited on nothing and were refused.
    assert_eq!(settle(&mut ada_ws, &chat, "2").await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_looping_on_kv_never_hold_up_another_users_reply() {
    // The attack of issue 23: dry runs of scripts that loop on `ctx.kv`, asked for
    // without end by several users, used to hold every hook thread for minutes. Here each
    // lasts 61 s (1 s of CPU plus the most `kv_time_ms` allows, the call limit out of the
    // way), longer than the test waits for anything; more of them are under way than
    // there are hook threads; and a reply another user's script sends must still arrive,
    // before any of them ends. On the hook threads, it could only come after one ended.
    let app = TestApp::spawn_with(|c| {
        c.automation.threads = 2;
        c.automation.kv_time_ms = 60_000;
        c.automation.kv_max_calls = u32::MAX;
    })
    .await;
    let (bob, carol) = (app.register("bob").await, app.register("carol").await);
    let chat = app.direct(&bob, &carol).await;
    app.script(
        &carol,
        &["incoming"],
        r#"export function onIncoming(msg) { if (msg.body === "ping") return { reply: "pong" }; }"#,
    )
    .await;
    let mut attackers = Vec::new();
    for n in 0..3 {
        let attacker = app.register(&format!("mallory{n}")).await;
        let (status, script) = app
            .post(
                Some(&attacker.token),
                "/api/v1/scripts",
                json!({
                    "name": "kv loop",
                    "hooks": ["incoming"],
                    "cpu_ms": 1000,
                    "source": r#"export function onIncoming(msg, ctx) { for (;;) ctx.kv.get("k"); }"#,
                }),
            )
            .await;
        assert_eq!(status, 201, "{script}");
        let path = format!("/api/v1/scripts/{}/test", script["id"].as_str().unwrap());
        attackers.push((attacker.token, path));
    }
    let (results, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut hammers = tokio::task::JoinSet::new();
    for (n, (token, path)) in attackers.into_iter().enumerate() {
        for _ in 0..2 {
            let (api, token, path, results) = (
                Api::new(app.addr),
                token.clone(),
                path.clone(),
                results.clone(),
            );
            hammers.spawn(async move {
                loop {
                    let (status, body) = api
                        .post(Some(&token), &path, json!({ "message": { "body": "x" } }))
                        .await;
                    // Pacing by the server's own hint, as a client would; not a wait
                    // for an event.
                    let retry = body["error"]["retry_after_ms"].as_u64();
                    if results.send((n, status, body)).is_err() {
                        return;
                    }
                    if let Some(ms) = retry {
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                }
            });
        }
    }
    // Every attacker has a dry run under way once one of their requests is refused.
    let mut refused = [false; 3];
    while refused.contains(&false) {
        let (n, status, body) = answers.recv().await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (429, Some("rate_limited")),
            "no dry run ends this early: {body}"
        );
        refused[n] = true;
    }

    let mut bob_ws = app.ws(&bob).await;
    bob_ws.send_message(&chat, "1", "ping").await;
    let pong = bob_ws.message_where(|m| m["body"] == "pong").await;
    assert_eq!(pong["origin"], "script");
    while let Ok((_, status, body)) = answers.try_recv() {
        assert_eq!(
            status, 429,
            "the reply came before any dry run ended: {body}"
        );
    }
    hammers.abort_all();
}

/// Outgoing scripts see every change their owner sends, and may refuse it; incoming
/// scripts run on messages only, not on changes to them.
#[tokio::test]
async fn outgoing_scripts_see_changes_and_incoming_scripts_only_messages() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let chat = app.direct(&ada, &bob).await;
    app.script(
        &ada,
        &["outgoing"],
        r#"
        export function onOutgoing(msg) {
            if (msg.kind === "edit") return { drop: `no edits of ${msg.target_id}` };
            if (msg.kind === "delete") return { rewrite: "a delete has no body" };
        }
        "#,
    )
    .await;
    app.script(
        &bob,
        &["incoming"],
        r#"export function onIncoming(msg) { return { reply: `seen ${msg.kind}` }; }"#,
    )
    .await;
    let mut ada_ws = app.ws(&ada).await;
    let mut bob_ws = app.ws(&bob).await;

    ada_ws.send_message(&chat, "1", "hello").await;
    let hello = bob_ws.message_where(|m| m["client_msg_id"] == "1").await;
    let target = hello["message_id"].as_str().unwrap().to_owned();
    let reply = ada_ws
        .message_where(|m| m["sender_id"] == bob.id.as_str())
        .await;
    assert_eq!(reply["body"], "seen text");

    ada_ws
        .send(json!({ "type": "edit", "client_msg_id": "e", "conversation_id": chat, "message_id": target, "body": "hello!" }))
        .await;
    // Accepted (on the log), then refused by the script.
    assert_eq!(ada_ws.expect("accepted").await["client_msg_id"], "e");
    let error = ada_ws.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["client_msg_id"].as_str()),
        (Some("blocked"), Some("e"))
    );
    assert_eq!(error["message"], format!("no edits of {target}"));

    ada_ws
        .send(json!({ "type": "delete", "client_msg_id": "d", "conversation_id": chat, "message_id": target }))
        .await;
    assert_eq!(ada_ws.expect("accepted").await["client_msg_id"], "d");
    let deleted = bob_ws.message_where(|m| m["client_msg_id"] == "d").await;
    assert_eq!(
        (deleted["kind"].as_str(), deleted["body"].as_str()),
        (Some("delete"), Some(""))
    );
    let last = settle(&mut ada_ws, &chat, "marker").await;
    let kinds: Vec<(String, String)> = app
        .history(&ada, &chat)
        .await
        .iter()
        .filter(|m| m["seq"].as_i64().unwrap() < last)
        .map(|m| {
            (
                m["kind"].as_str().unwrap().to_owned(),
                m["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("text".to_owned(), String::new()),
            ("text".to_owned(), "seen text".to_owned()),
            ("delete".to_owned(), String::new()),
        ],
        "no edit stored; no reply to the delete; the deleted message's body erased"
    );
}
