//! The harness: `TestApp::spawn()` starts a node on 127.0.0.1:0 with a fresh data
//! directory; `WsClient` speaks the WebSocket protocol and waits for frames with a
//! bound (never a sleep).

use chorus::node::Node;
use chorus_config::Config;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// The password of every user the harness makes.
pub(crate) const PASSWORD: &str = "correct horse";

/// How long anything expected may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// HTTP and WebSocket helpers for a node at `addr`, in this process or another.
pub(crate) struct Api {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

/// A node running in this process, with its own data directory.
pub(crate) struct TestApp {
    api: Api,
    pub data_dir: TempDir,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl std::ops::Deref for TestApp {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A registered user.
#[derive(Clone, Debug)]
pub(crate) struct TestUser {
    pub id: String,
    pub username: String,
    pub token: String,
}

pub(crate) fn test_config(data_dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.shutdown.drain_secs = 5;
    config
}

impl TestApp {
    pub(crate) async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub(crate) async fn spawn_with(tune: impl FnOnce(&mut Config)) -> TestApp {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(data_dir.path());
        tune(&mut config);
        Self::start(config, data_dir).await
    }

    /// A node whose only administrator (`jobs.admins`, by id) is `username`: the
    /// account is made in the database before the node starts, as an operator would
    /// (the id is what the configuration needs), and signed in with `PASSWORD`.
    pub(crate) async fn spawn_with_admin(
        username: &str,
        tune: impl FnOnce(&mut Config),
    ) -> (TestApp, TestUser) {
        use chorus_store::Store;
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(data_dir.path());
        tune(&mut config);
        let store = chorus_store::sqlite::SqliteStore::open(&data_dir.path().join("chorus.db"))
            .await
            .unwrap();
        let hash = chorus_gateway::auth::Hashing::new(1, 0)
            .hash(PASSWORD.into())
            .await
            .unwrap();
        let admin = store.create_user(username, &hash).await.unwrap();
        drop(store);
        config.jobs.admins = vec![admin.id.to_string()];
        let app = Self::start(config, data_dir).await;
        let admin = app.login(username, PASSWORD).await;
        (app, admin)
    }

    pub(crate) async fn start(config: Config, data_dir: TempDir) -> TestApp {
        if std::env::var_os("TEST_LOG").is_some() {
            chorus::telemetry::init_logs(false);
        }
        let node = Node::build(config).await.expect("node builds");
        let addr = node.addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(node.run(shutdown.clone()));
        TestApp {
            api: Api::new(addr),
            data_dir,
            shutdown,
            handle,
        }
    }

    /// Stops the node gracefully and hands back its data directory.
    pub(crate) async fn stop(self) -> TempDir {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
        self.data_dir
    }
}

impl Api {
    pub(crate) fn new(addr: SocketAddr) -> Api {
        Api {
            addr,
            http: reqwest::Client::new(),
        }
    }

    /// A client of the node at `addr` whose connections come from `local` (any of
    /// 127.0.0.0/8 on Linux): another client address, as far as the node can tell.
    pub(crate) fn from_address(addr: SocketAddr, local: &str) -> Api {
        Api {
            addr,
            http: reqwest::Client::builder()
                .local_address(local.parse::<std::net::IpAddr>().unwrap())
                .build()
                .unwrap(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    pub(crate) async fn post(&self, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        status_json(req.send().await.unwrap()).await
    }

    pub(crate) async fn put(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    /// Uploads a script; panics unless it is created.
    pub(crate) async fn script(&self, user: &TestUser, hooks: &[&str], source: &str) -> Value {
        let (status, body) = self
            .post(
                Some(&user.token),
                "/api/v1/scripts",
                json!({ "name": "test script", "hooks": hooks, "source": source }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub(crate) async fn delete(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    /// Logs in; panics unless it succeeds.
    pub(crate) async fn login(&self, username: &str, password: &str) -> TestUser {
        let (status, body) = self
            .post(
                None,
                "/api/v1/auth/login",
                json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        TestUser {
            id: body["user"]["id"].as_str().unwrap().to_owned(),
            username: username.to_owned(),
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    pub(crate) async fn register(&self, name: &str) -> TestUser {
        let username = format!(
            "{name}-{}",
            &uuid::Uuid::now_v7().simple().to_string()[24..]
        );
        let (status, body) = self
            .post(
                None,
                "/api/v1/auth/register",
                json!({ "username": username, "password": PASSWORD }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        TestUser {
            id: body["user"]["id"].as_str().unwrap().to_owned(),
            username,
            token: body["token"].as_str().unwrap().to_owned(),
        }
    }

    pub(crate) async fn direct(&self, a: &TestUser, b: &TestUser) -> String {
        let (status, body) = self
            .post(
                Some(&a.token),
                "/api/v1/conversations",
                json!({ "kind": "direct", "members": [b.id] }),
            )
            .await;
        assert!(status == 201 || status == 200, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn group(&self, owner: &TestUser, members: &[&TestUser]) -> String {
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let (status, body) = self
            .post(
                Some(&owner.token),
                "/api/v1/conversations",
                json!({ "kind": "group", "title": "test group", "members": ids }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Every stored message of a conversation, paging through history.
    pub(crate) async fn history(&self, user: &TestUser, conversation: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (status, body) = self
                .get(
                    &user.token,
                    &format!(
                        "/api/v1/conversations/{conversation}/messages?after_seq={after}&limit=500"
                    ),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let page = body["messages"].as_array().unwrap().clone();
            if page.is_empty() {
                return all;
            }
            after = page.last().unwrap()["seq"].as_i64().unwrap();
            all.extend(page);
        }
    }

    /// Waits until `conversation` has stored message `seq` (polling history: the
    /// stored state has no event to await over HTTP).
    pub(crate) async fn wait_for_seq(&self, user: &TestUser, conversation: &str, seq: i64) {
        let path = format!("/api/v1/conversations/{conversation}");
        poll_until(&format!("seq {seq} never stored"), || async {
            let (_, c) = self.get(&user.token, &path).await;
            c["last_seq"].as_i64() >= Some(seq)
        })
        .await;
    }

    /// Waits until the counter `name` on `/metrics` reaches `at_least` (polling: a
    /// counter has no event to await).
    pub(crate) async fn wait_for_counter(&self, name: &str, at_least: f64) {
        poll_until(&format!("{name} never reached {at_least}"), || async {
            let text = self.metrics_text().await;
            let value: f64 = text
                .lines()
                .filter(|l| l.split([' ', '{']).next() == Some(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            value >= at_least
        })
        .await;
    }

    /// Uploads `bytes` as `name`; the status and the answer.
    pub(crate) async fn upload(
        &self,
        user: &TestUser,
        name: &str,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url("/api/v1/attachments"))
            .query(&[("name", name)])
            .bearer_auth(&user.token)
            .body(bytes);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Uploads as `text/plain`; panics unless it is stored. The attachment's shape.
    pub(crate) async fn uploaded(&self, user: &TestUser, name: &str, bytes: Vec<u8>) -> Value {
        self.uploaded_as(user, name, "text/plain", bytes).await
    }

    /// Uploads as `content_type`; panics unless it is stored. The attachment's shape.
    pub(crate) async fn uploaded_as(
        &self,
        user: &TestUser,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Value {
        let (status, body) = self.upload(user, name, Some(content_type), bytes).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// GET with extra headers; the raw answer.
    pub(crate) async fn fetch(
        &self,
        user: &TestUser,
        path: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.get(self.url(path)).bearer_auth(&user.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// What `/metrics` says now.
    pub(crate) async fn metrics_text(&self) -> String {
        let response = self.http.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    pub(crate) async fn ws(&self, user: &TestUser) -> WsClient {
        WsClient::connect(self.addr, &user.token).await
    }
}

async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, body)
}

/// A WebSocket client speaking the chorus protocol. Frames read while waiting for
/// another type are kept, in order, for later `expect`s.
pub(crate) struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: std::collections::VecDeque<Value>,
    pub session_id: String,
}

/// How a session ended, seen from the client.
#[derive(Debug, PartialEq)]
pub(crate) struct Closed {
    pub code: u16,
    pub reason: String,
}

impl WsClient {
    pub(crate) async fn connect(addr: SocketAddr, token: &str) -> WsClient {
        let url = format!("ws://{addr}/api/v1/ws?token={token}");
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        let mut client = WsClient {
            stream,
            pending: Default::default(),
            session_id: String::new(),
        };
        let ready = client.expect("ready").await;
        client.session_id = ready["session_id"].as_str().unwrap().to_owned();
        client
    }

    pub(crate) async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    pub(crate) async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next text frame as JSON; panics on close or after [`PATIENCE`].
    pub(crate) async fn next(&mut self) -> Value {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        self.read().await
    }

    async fn read(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("a frame within the patience bound")
                .expect("the stream is open")
                .expect("a valid frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of type `ty`; frames of other types stay queued.
    pub(crate) async fn expect(&mut self, ty: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|f| f["type"] == ty) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let frame = self.read().await;
            if frame["type"] == ty {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// Collects the next `n` `message` frames.
    pub(crate) async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.expect("message").await["message"].clone());
        }
        out
    }

    /// Skips `message` frames until one whose message `wanted` accepts; that message.
    pub(crate) async fn message_where(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self.expect("message").await["message"].clone();
            if wanted(&m) {
                return m;
            }
        }
    }

    /// A ping/pong round trip: every frame the server sent before the pong has arrived.
    pub(crate) async fn barrier(&mut self) -> Vec<Value> {
        let nonce = uuid::Uuid::now_v7().to_string();
        self.send(json!({ "type": "ping", "nonce": nonce })).await;
        let mut before: Vec<Value> = self.pending.drain(..).collect();
        loop {
            let frame = self.read().await;
            if frame["type"] == "pong" && frame["nonce"] == nonce {
                return before;
            }
            before.push(frame);
        }
    }

    /// After a ping/pong round trip, asserts that no frame of type `ty` came.
    pub(crate) async fn assert_none(&mut self, ty: &str, why: &str) {
        let before = self.barrier().await;
        assert!(!before.iter().any(|f| f["type"] == ty), "{why}: {before:?}");
    }

    /// Sends a message and waits for its `accepted`.
    pub(crate) async fn send_message(
        &mut self,
        conversation: &str,
        client_msg_id: &str,
        body: &str,
    ) -> String {
        self.send(json!({
            "type": "send",
            "client_msg_id": client_msg_id,
            "conversation_id": conversation,
            "body": body,
        }))
        .await;
        let accepted = self.expect("accepted").await;
        assert_eq!(accepted["client_msg_id"], client_msg_id);
        accepted["message_id"].as_str().unwrap().to_owned()
    }

    /// Reads until the server closes the connection and returns the close frame.
    pub(crate) async fn closed(&mut self) -> Closed {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.stream.next())
                .await
                .expect("the server closes within the patience bound");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed {
                        code: frame.code.into(),
                        reason: frame.reason.to_string(),
                    };
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Closed {
                        code: 1005,
                        reason: String::new(),
                    };
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed instead of closing: {e}"),
            }
        }
    }

    pub(crate) async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// Checks `done` every 20 ms until it holds; fails with `what` after [`PATIENCE`].
pub(crate) async fn poll_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SHA-256 of `bytes`, lowercase hex (an attachment's `sha256`).
pub(crate) fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
