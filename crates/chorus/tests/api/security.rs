//! One user (or anyone) must not be able to hurt the others: each test performs an
//! attack a review found and shows it contained (docs/security.md lists them).

use crate::helpers::*;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection from `source` that sends the first line of a request and nothing
/// more (a slowloris).
async fn half_open(server: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    stream
}

/// Waits until the server closes `stream` (end of stream or a reset).
async fn closed_by_server(mut stream: TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("the server closes the connection within the patience bound");
        match read {
            Ok(0) | Err(_) => return,
            // An answer (a 408, say) before the close is fine.
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn half_open_connections_are_capped_per_address_and_cut_at_the_header_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_connections_per_address = 20;
        c.limits.header_timeout_secs = 1;
    })
    .await;
    let attacker: IpAddr = "127.0.0.3".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(half_open(app.addr, attacker).await);
    }
    // Another client (from 127.0.0.1) is served meanwhile.
    app.wait_for_counter("chorus_http_connections_refused_total", 30.0)
        .await;
    let status = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(status.status(), 200);
    // Every one of the attacker's connections is closed: 30 at once, 20 when their
    // head did not come in time.
    futures::future::join_all(held.into_iter().map(closed_by_server)).await;
    let from_attacker = reqwest::Client::builder()
        .local_address(attacker)
        .build()
        .unwrap();
    let status = from_attacker
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "the address may connect again");
}

#[tokio::test]
async fn the_total_connection_limit_holds_across_addresses() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_connections = 10;
        c.limits.max_connections_per_address = 0;
        c.limits.header_timeout_secs = 1;
    })
    .await;
    let mut held = Vec::new();
    for i in 0..15u8 {
        held.push(half_open(app.addr, IpAddr::from([127, 0, 1, i + 1])).await);
    }
    // Every one is closed, five at once, ten when their head did not come in time;
    // then the places are free again.
    futures::future::join_all(held.into_iter().map(closed_by_server)).await;
    app.wait_for_counter("chorus_http_connections_refused_total", 5.0)
        .await;
    let status = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(
        status.status(),
        200,
        "places come back as connections close"
    );
}

#[tokio::test]
async fn a_user_holds_a_bounded_number_of_sessions() {
    let app = TestApp::spawn_with(|c| c.limits.max_sessions_per_user = 2).await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let first = app.ws(&ada).await;
    let _second = app.ws(&ada).await;
    let url = format!("ws://{}/api/v1/ws?token={}", app.addr, ada.token);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "limit_reached", "{body}");
        }
        other => panic!("a third session was not refused: {other:?}"),
    }
    let _bob = app.ws(&bob).await;
    first.close().await;
    // The closed session's place comes back once the server has seen it go.
    poll_until("a closed session never freed its place", || async {
        tokio_tungstenite::connect_async(&url).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn typing_and_read_frames_are_rate_limited() {
    let app = TestApp::spawn_with(|c| {
        c.limits.notice_rate_per_sec = 1;
        c.limits.notice_burst = 5;
    })
    .await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    let chat = app.direct(&ada, &bob).await;
    let mut ada_ws = app.ws(&ada).await;
    let mut bob_ws = app.ws(&bob).await;
    for _ in 0..20 {
        ada_ws
            .send(json!({ "type": "typing", "conversation_id": chat }))
            .await;
    }
    let refused = ada_ws
        .barrier()
        .await
        .into_iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    assert!(refused >= 14, "{refused} of 20 refused");
    // A message after the typing frames reaches bob after every typing notice that
    // got through (one partition per conversation keeps their order).
    ada_ws.send_message(&chat, "m", "after").await;
    let mut typing = 0;
    loop {
        let frame = bob_ws.next().await;
        match frame["type"].as_str() {
            Some("typing") => typing += 1,
            Some("message") => break,
            _ => {}
        }
    }
    assert_eq!(typing, 20 - refused, "only what was not refused went out");
}

#[tokio::test]
async fn groups_and_their_members_are_bounded() {
    let app = TestApp::spawn_with(|c| {
        c.limits.max_group_members = 3;
        c.limits.max_groups_per_user = 2;
    })
    .await;
    let users = [
        app.register("ada").await,
        app.register("bob").await,
        app.register("cy").await,
        app.register("dee").await,
    ];
    let [ada, bob, cy, dee] = &users;
    let create = |members: Vec<&str>| {
        app.post(
            Some(&ada.token),
            "/api/v1/conversations",
            json!({ "kind": "group", "title": "g", "members": members }),
        )
    };
    let (status, body) = create(vec![&bob.id, &cy.id, &dee.id]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("limit_reached")),
        "{body}"
    );
    let (status, group) = create(vec![&bob.id, &cy.id]).await;
    assert_eq!(status, 201, "{group}");
    let path = format!(
        "/api/v1/conversations/{}/members",
        group["id"].as_str().unwrap()
    );
    let (status, body) = app
        .post(Some(&ada.token), &path, json!({ "user_id": dee.id }))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("limit_reached")),
        "{body}"
    );
    assert_eq!(create(vec![]).await.0, 201);
    let (status, body) = create(vec![]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("limit_reached")),
        "a third group: {body}"
    );
}

#[tokio::test]
async fn stored_jobs_are_bounded_per_user() {
    let app = TestApp::spawn_with(|c| c.jobs.max_stored_per_user = 2).await;
    let (ada, bob) = (app.register("ada").await, app.register("bob").await);
    async fn submit(app: &TestApp, user: &TestUser) -> (u16, Value) {
        app.post(
            Some(&user.token),
            "/api/v1/jobs",
            json!({ "source": { "script": "export function main() { return 1; }" } }),
        )
        .await
    }
    let (status, first) = submit(&app, &ada).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(submit(&app, &ada).await.0, 202);
    let (status, body) = submit(&app, &ada).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("limit_reached")),
        "{body}"
    );
    assert_eq!(submit(&app, &bob).await.0, 202, "per user");
    let job = first["job_id"].as_str().unwrap();
    assert_eq!(
        app.delete(&ada.token, &format!("/api/v1/jobs/{job}"))
            .await
            .0,
        204
    );
    assert_eq!(submit(&app, &ada).await.0, 202, "erasing one makes room");
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_and_secret_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let app = TestApp::spawn_with(|c| c.data_dir = data.clone()).await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let chat = app.direct(&ada, &bob).await;
    app.ws(&ada).await.send_message(&chat, "1", "secret").await;
    let mode = |name: &str| {
        std::fs::metadata(data.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "the data directory");
    for file in ["chorus.db", "chorus.db-wal", "chorus.db-shm", "jwt.secret"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
}
