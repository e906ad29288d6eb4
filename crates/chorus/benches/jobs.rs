//! Jobs, embedded: trivial job submit → result latency (over HTTP, the end seen as the
//! `job` frame on the owner's WebSocket), and jobs per second of one worker.
//!
//! `cargo bench -p chorus --bench jobs` (figures in BENCHMARKS.md).

use chorus::node::Node;
use chorus_config::Config;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const TRIVIAL: &str = "export function main(input) { return input.n + 1; }";

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    // One worker throughout: the figures are per worker.
    config.jobs.workers = 1;
    config.jobs.observer.min_workers = 1;
    config.jobs.observer.max_workers = 1;
    let node = Node::build(config).await.unwrap();
    let addr = node.addr();
    let stop = CancellationToken::new();
    let running = tokio::spawn(node.run(stop.clone()));
    let http = reqwest::Client::new();
    let credentials = json!({"username": "bench", "password": "bench-password"});
    let body = post(
        &http,
        format!("http://{addr}/api/v1/auth/register"),
        None,
        &credentials,
    )
    .await;
    let token = body["token"].as_str().unwrap().to_owned();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws?token={token}"))
            .await
            .unwrap();
    ws.next().await.unwrap().unwrap(); // ready
    let submit = move |n: u64| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let job = json!({"source": {"script": TRIVIAL}, "input": {"n": n}});
            let r = post(
                &http,
                format!("http://{addr}/api/v1/jobs"),
                Some(&token),
                &job,
            )
            .await;
            r["job_id"].as_str().unwrap().to_owned()
        }
    };
    let finished = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        let Some(Ok(Message::Text(text))) = ws.next().await else {
            panic!("socket closed")
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        if frame["type"] == "job" && frame["job"]["status"] == "succeeded" {
            return frame["job"]["id"].as_str().unwrap().to_owned();
        }
    };

    // Latency: one job at a time.
    let mut latencies = Vec::new();
    for n in 0..1200u64 {
        let start = Instant::now();
        let id = submit(n).await;
        while finished(&mut ws).await != id {}
        if n >= 200 {
            latencies.push(start.elapsed());
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "submit -> result (1000 sequential trivial jobs): p50 {:?}, p90 {:?}, p99 {:?}",
        pct(0.50),
        pct(0.90),
        pct(0.99)
    );

    // Throughput: 2000 queued at once, one worker.
    let total = 2000u64;
    let start = Instant::now();
    let submitting = tokio::spawn({
        let submit = submit.clone();
        async move {
            for n in 0..total {
                submit(n).await;
            }
        }
    });
    for _ in 0..total {
        finished(&mut ws).await;
    }
    submitting.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "throughput: {total} trivial jobs in {secs:.2} s = {:.0} jobs/s with one worker",
        total as f64 / secs
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// POSTs `body` as JSON (with `token` as bearer, if any) and reads the JSON answer.
async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: &Value) -> Value {
    let mut request = http.post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().json().await.unwrap()
}
