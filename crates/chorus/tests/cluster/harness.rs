//! Starting and killing chorus processes (and, for one test, a broker).

use crate::helpers::{Api, PATIENCE, TestUser, WsClient};
use sqlx::Connection;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The servers the cluster uses.
#[derive(Clone)]
pub(crate) struct Backends {
    pub kafka: String,
    pub postgres: String,
    pub redis: String,
    /// The endpoint of an S3-compatible server with a bucket [`S3_BUCKET`], if any
    /// (`CHORUS_TEST_S3`); without it each node keeps attachments in its own data
    /// directory, so that only its own clients can read them back.
    pub s3: Option<String>,
}

/// The bucket `CHORUS_TEST_S3` must have (as for the object store contract tests).
pub(crate) const S3_BUCKET: &str = "chorus-test";

impl Backends {
    /// From the environment, or `None` (the test is skipped).
    pub(crate) fn from_env() -> Option<Backends> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (
            get("CHORUS_TEST_KAFKA"),
            get("CHORUS_TEST_POSTGRES"),
            get("CHORUS_TEST_REDIS"),
        ) {
            (Some(kafka), Some(postgres), Some(redis)) => Some(Backends {
                kafka,
                postgres,
                redis,
                s3: get("CHORUS_TEST_S3"),
            }),
            _ => {
                eprintln!(
                    "CHORUS_TEST_KAFKA, CHORUS_TEST_POSTGRES or CHORUS_TEST_REDIS unset: skipped"
                );
                None
            }
        }
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One cluster: a topic prefix, a database, Redis keys, a prefix in the S3 bucket (when
/// there is one), and its nodes.
pub(crate) struct Cluster {
    pub backends: Backends,
    pub prefix: String,
    pub db_url: String,
    secret: String,
    dir: tempfile::TempDir,
}

/// A `chorus serve` process.
pub(crate) struct NodeProcess {
    pub id: String,
    pub addr: SocketAddr,
    child: Child,
}

impl Cluster {
    pub(crate) async fn new(backends: Backends) -> Cluster {
        let prefix = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[16..]);
        let mut admin = sqlx::PgConnection::connect(&backends.postgres)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE chorus_{prefix}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let base = backends.postgres.rsplit_once('/').unwrap().0;
        Cluster {
            db_url: format!("{base}/chorus_{prefix}"),
            prefix,
            secret: format!("cluster-test-secret-{}", uuid::Uuid::now_v7().simple()),
            dir: tempfile::tempdir().unwrap(),
            backends,
        }
    }

    /// Starts a node with `roles` (empty: all) and waits until it is ready.
    pub(crate) async fn start(&self, id: &str, roles: &str) -> NodeProcess {
        self.start_with_log(id, roles, &self.backends.kafka).await
    }

    /// The object store every node of the cluster shares, if the test has an S3 server:
    /// its own prefix of the bucket.
    pub(crate) fn files_url(&self) -> Option<String> {
        self.backends
            .s3
            .as_ref()
            .map(|_| format!("s3://{S3_BUCKET}/{}", self.prefix))
    }

    pub(crate) async fn start_with_log(&self, id: &str, roles: &str, log: &str) -> NodeProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
        cmd.arg("serve")
            .args(["--node-id", id, "--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(self.dir.path().join(id))
            .args([
                "--log",
                log,
                "--db",
                &self.db_url,
                "--registry",
                &self.backends.redis,
            ])
            .args(["--topic-prefix", &self.prefix, "--partitions", "4"])
            .env("CHORUS_JWT_SECRET", &self.secret)
            .env(
                "CHORUS_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if !roles.is_empty() {
            cmd.args(["--roles", roles]);
        }
        if let (Some(url), Some(endpoint)) = (self.files_url(), &self.backends.s3) {
            // Through the variables object_store reads (AmazonS3Builder::from_env), as an
            // operator would configure it; the credentials of the object store contract
            // tests (moto takes any).
            cmd.args(["--files", &url])
                .env("AWS_ENDPOINT", endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "chorus")
                .env("AWS_SECRET_ACCESS_KEY", "chorus-secret")
                .env("AWS_ALLOW_HTTP", "true")
                .env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false");
        }
        let child = cmd.spawn().unwrap();
        let node = NodeProcess {
            id: id.into(),
            addr,
            child,
        };
        node.wait_ready().await;
        node
    }
}

impl NodeProcess {
    pub(crate) fn api(&self) -> Api {
        Api::new(self.addr)
    }

    pub(crate) async fn ws(&self, user: &TestUser) -> WsClient {
        WsClient::connect(self.addr, &user.token).await
    }

    /// Polls `/readyz` until it answers 200 (process start has no event to await).
    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = client
                .get(format!("http://{}/readyz", self.addr))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} did not become ready",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no drain, no goodbye.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// A tansu broker of the test's own, for the broker-outage test.
pub(crate) struct Broker {
    pub url: String,
    child: Child,
}

impl Broker {
    pub(crate) async fn start() -> Option<Broker> {
        let Ok(bin) = std::env::var("CHORUS_TEST_TANSU") else {
            eprintln!("CHORUS_TEST_TANSU unset: skipped");
            return None;
        };
        let port = free_port();
        let child = Self::spawn(&bin, port).await;
        Some(Broker {
            url: format!("kafka://127.0.0.1:{port}"),
            child,
        })
    }

    async fn spawn(bin: &str, port: u16) -> Child {
        let listen = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &listen,
                "--advertised-listener-url",
                &listen,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing answers, as in
    /// a network partition or a long pause. Its data survives.
    pub(crate) fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen broker go on (SIGCONT).
    pub(crate) fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("the broker runs").to_string();
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    }
}
