//! Restarts, crashes, graceful shutdown and slow readers.

use crate::helpers::*;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;

#[tokio::test]
async fn a_graceful_restart_keeps_every_message_and_token() {
    let app = TestApp::spawn().await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut ws = app.ws(&ada).await;
    // Accepted but not waited for: what the stages have not stored when the node stops
    // is in the log's journal, and stored after the restart.
    for i in 0..50 {
        ws.send(json!({ "type": "send", "client_msg_id": format!("k{i}"), "conversation_id": conv, "body": format!("m{i}") })).await;
    }
    for _ in 0..50 {
        ws.expect("accepted").await;
    }
    let stopping = tokio::spawn(async move {
        let closed = ws.closed().await;
        assert_eq!(closed.code, 1001, "going away");
        assert!(closed.reason.contains("reconnect"), "{}", closed.reason);
    });
    let data_dir = app.stop().await;
    stopping.await.unwrap();

    let app = TestApp::start(test_config(data_dir.path()), data_dir).await;
    app.wait_for_seq(&bob, &conv, 50).await;
    let stored = app.history(&bob, &conv).await;
    let bodies: Vec<String> = stored
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let mut ws = app.ws(&ada).await;
    ws.send_message(&conv, "after-restart", "still counting")
        .await;
    assert_eq!(
        ws.messages(1).await[0]["seq"],
        51,
        "seq continues after the restart"
    );
}

#[tokio::test]
async fn a_node_refuses_to_start_with_a_published_example_token_secret() {
    for example in chorus_config::EXAMPLE_JWT_SECRETS {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(data_dir.path());
        config.auth.jwt_secret = Some((*example).to_owned());
        let Err(e) = chorus::node::Node::build(config).await else {
            panic!("a node started with the example secret {example:?}");
        };
        let e = format!("{e:#}");
        assert!(e.contains("CHORUS_JWT_SECRET"), "{e}");
        assert!(e.contains("/dev/urandom"), "{e}");
    }
}

/// The `chorus` binary started as a child process.
struct Server {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
}

impl Server {
    async fn start(data_dir: &std::path::Path) -> Server {
        Self::start_with(data_dir, &[]).await
    }

    /// Started with `env` besides (e.g. `CHORUS_RATE_PER_SEC`).
    async fn start_with(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
        // Bind port 0 first to find a free port, then hand it to the child.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("CHORUS_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server { child, addr }
    }
}

#[tokio::test]
async fn kill_9_loses_no_stored_message() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(data_dir.path()).await;
    let app = Api::new(server.addr);
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut ws = WsClient::connect(server.addr, &ada.token).await;
    for i in 0..100 {
        ws.send_message(&conv, &format!("k{i}"), &format!("m{i}"))
            .await;
    }
    // Everything the client saw as stored must survive.
    let seen = ws.messages(100).await;
    server.child.kill().await.unwrap(); // SIGKILL
    drop(ws);

    let server = Server::start(data_dir.path()).await;
    let app = Api::new(server.addr);
    let stored = app.history(&bob, &conv).await;
    assert_eq!(stored, seen);
    let mut ws = WsClient::connect(server.addr, &ada.token).await;
    ws.send(json!({ "type": "sync", "since": { conv.clone(): 90 } }))
        .await;
    assert_eq!(ws.messages(10).await, seen[90..].to_vec());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_not_buffered() {
    let app = TestApp::spawn_with(|c| {
        c.limits.session_queue = 16;
        c.limits.rate_per_sec = 100_000;
        c.limits.rate_burst = 100_000;
    })
    .await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let conv = app.direct(&ada, &bob).await;
    let mut stalled = app.ws(&bob).await;
    let body = "x".repeat(16 * 1024);
    // Enough data to fill the socket buffers on both sides and then the queue. Sent
    // over HTTP: a sending WebSocket would get its own copies and stall too.
    let path = format!("/api/v1/conversations/{conv}/messages");
    let send = async {
        for i in 0..1500 {
            let (status, _) = app
                .post(
                    Some(&ada.token),
                    &path,
                    json!({ "client_msg_id": format!("k{i}"), "body": body }),
                )
                .await;
            assert_eq!(status, 202);
        }
    };
    // The client reads again once the server has given up on it: its close frame is
    // behind what the socket buffers hold, and the server waits for the client to take
    // it only a little while.
    let closed = async {
        app.wait_for_counter("chorus_ws_overflow_closed_total", 1.0)
            .await;
        stalled.closed().await
    };
    let ((), closed) = tokio::join!(send, closed);
    assert_eq!(closed.code, 1008, "{closed:?}");
    assert!(closed.reason.contains("sync"), "{}", closed.reason);
    // The server is unharmed and nothing stored was lost: once the pipeline is through
    // (a 16-frame queue cannot take the burst still in flight), the client resumes.
    app.wait_for_seq(&bob, &conv, 1500).await;
    let mut resumed = app.ws(&bob).await;
    resumed
        .send(json!({ "type": "sync", "since": { conv.clone(): 1490 } }))
        .await;
    let tail = resumed.messages(10).await;
    assert_eq!(tail.last().unwrap()["seq"], 1500);
    assert_eq!(resumed.expect("synced").await["last_seq"][&conv], 1500);
}

/// What the senders of the SIGKILL test were told was accepted, per conversation.
type Accepted = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>>;

/// Sends into `conversation` as fast as the server confirms, `window` sends in flight,
/// noting every `accepted`, until the connection dies.
async fn send_until_killed(
    addr: std::net::SocketAddr,
    token: String,
    conversation: String,
    window: usize,
    accepted: Accepted,
    count: tokio::sync::watch::Sender<usize>,
) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://{addr}/api/v1/ws?token={token}");
    let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let mut in_flight = 0;
    loop {
        while in_flight < window {
            let frame = json!({
                "type": "send",
                "client_msg_id": uuid::Uuid::now_v7().to_string(),
                "conversation_id": conversation,
                "body": "under load",
            });
            if tx.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
            in_flight += 1;
        }
        let Some(Ok(Message::Text(text))) = rx.next().await else {
            return;
        };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        match frame["type"].as_str() {
            Some("accepted") => {
                in_flight -= 1;
                let id = frame["message_id"].as_str().unwrap().to_owned();
                accepted
                    .lock()
                    .unwrap()
                    .entry(conversation.clone())
                    .or_default()
                    .push(id);
                count.send_modify(|n| *n += 1);
            }
            Some("error") => in_flight -= 1,
            _ => {}
        }
    }
}

/// Once a client has `accepted` for a message, a SIGKILL at any moment loses nothing:
/// after a restart every accepted message is stored exactly once, with `seq` gapless,
/// and nobody retried anything. Eight senders, two to a conversation, 32 sends in
/// flight each; killed four times, each after a random number of acceptances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_accepted_message() {
    use rand::Rng;
    const ROUNDS: usize = 4;
    let data_dir = tempfile::tempdir().unwrap();
    let unlimited = [
        ("CHORUS_RATE_PER_SEC", "1000000"),
        ("CHORUS_RATE_BURST", "1000000"),
    ];
    let mut server = Server::start_with(data_dir.path(), &unlimited).await;
    let api = Api::new(server.addr);
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(api.register(&format!("sender{i}")).await);
    }
    let mut pairs = Vec::new();
    for pair in users.chunks(2) {
        pairs.push(api.direct(&pair[0], &pair[1]).await);
    }
    let accepted: Accepted = Default::default();
    for round in 0..ROUNDS {
        if round > 0 {
            server = Server::start_with(data_dir.path(), &unlimited).await;
        }
        let (count, mut counted) = tokio::sync::watch::channel(0usize);
        let kill_after = rand::rng().random_range(200..3000);
        let mut senders = tokio::task::JoinSet::new();
        for (i, user) in users.iter().enumerate() {
            senders.spawn(send_until_killed(
                server.addr,
                user.token.clone(),
                pairs[i / 2].clone(),
                32,
                accepted.clone(),
                count.clone(),
            ));
        }
        tokio::time::timeout(PATIENCE, counted.wait_for(|n| *n >= kill_after))
            .await
            .expect("the senders get acceptances")
            .unwrap();
        server.child.kill().await.unwrap(); // SIGKILL
        while senders.join_next().await.is_some() {}
    }
    let server = Server::start(data_dir.path()).await;
    let api = Api::new(server.addr);
    let accepted = accepted.lock().unwrap().clone();
    let mut total = 0;
    for (conversation, pair) in pairs.iter().zip(users.chunks(2)) {
        // What the journal kept is stored by the replay after the restart, which the
        // first reads may overtake: wait until the history holds every accepted one.
        let want = &accepted[conversation];
        let mut stored = api.history(&pair[0], conversation).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !want
            .iter()
            .all(|id| stored.iter().any(|m| m["message_id"] == id.as_str()))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "accepted messages lost: {:?}",
                want.iter()
                    .filter(|id| !stored.iter().any(|m| m["message_id"] == id.as_str()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            stored = api.history(&pair[0], conversation).await;
        }
        let seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=stored.len() as i64).collect::<Vec<_>>(),
            "gapless"
        );
        let mut ids: Vec<&str> = stored
            .iter()
            .map(|m| m["message_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), before, "each message stored once");
        total += accepted[conversation].len();
    }
    assert!(total >= ROUNDS * 200, "{total} acceptances");
}

/// A job the server took (202) runs after a SIGKILL and a restart, queued or running
/// when the process died.
#[tokio::test]
async fn accepted_jobs_run_after_a_sigkill() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(data_dir.path()).await;
    let api = Api::new(server.addr);
    let ada = api.register("ada").await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let (status, body) = api
            .post(
                Some(&ada.token),
                "/api/v1/jobs",
                json!({
                    "source": { "script": "export function main() { let x = 0; for (let i = 0; i < 2e7; i++) x += i; return 'done'; }" },
                    "cpu_ms": 30000,
                }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        jobs.push(body["job_id"].as_str().unwrap().to_owned());
    }
    server.child.kill().await.unwrap(); // SIGKILL
    let server = Server::start(data_dir.path()).await;
    let api = Api::new(server.addr);
    for job in &jobs {
        let path = format!("/api/v1/jobs/{job}/result");
        poll_until(&format!("job {job} never finished"), || async {
            api.get(&ada.token, &path).await.0 == 200
        })
        .await;
        let (_, result) = api.get(&ada.token, &path).await;
        assert_eq!(
            (&result["status"], &result["output"]),
            (&json!("succeeded"), &json!("done")),
            "{result}"
        );
    }
}
