//! Hook call rates and instance sizes, through the public API.
//!
//! `cargo bench -p chorus-sandbox` prints one `name value` line per measurement:
//!
//! - `hook_calls_per_s`: `call(..).await` in a loop, one key, one sandbox thread, from a
//!   current-thread runtime: a channel round trip per call.
//! - `hook_batch_calls_per_s`: `call_batch` of 1000 calls with one key, one sandbox
//!   thread: about the raw rate of one instance.
//! - `hook_batch_calls_per_s_all_threads`: `call_batch` of 1000 calls over 100 keys,
//!   one sandbox thread per core.
//! - `instance_create_us`: calls that each load a new key and keep it pooled (creation on
//!   fresh memory, one round trip included).
//! - `instance_create_unpooled_us`: the same with nothing pooled, so that each instance
//!   reuses the memory of the one before (one round trip included).
//! - `bytes_per_instance`: `pooled().1 / pooled().0` after 1000 keys.
//! - `rss_bytes_per_instance`: growth of the process's resident memory over those 1000
//!   keys, per key (Linux only).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_sandbox::{Call, Limits, Sandbox, SandboxConfig};
use serde_json::{Value, json};

const HOOK: &str = r#"
let seen = 0;
export function onIncoming(msg, ctx) {
    seen += 1;
    if (msg.text === "ping") return { reply: "pong" };
    return { reply: "hi" };
}
"#;

fn message() -> Value {
    json!({
        "id": "0190f5a2-7c1e-7d3a-9b1e-2f6c4d8e9a01",
        "conversation": "0190f5a2-7c1e-7d3a-9b1e-2f6c4d8e9a02",
        "sender": "0190f5a2-7c1e-7d3a-9b1e-2f6c4d8e9a03",
        "text": "hello there",
        "sent_at": 1_722_000_000_000_u64,
    })
}

fn hook_call(key: &str, source: &Arc<str>, msg: &Value) -> Call {
    Call {
        owner: key.to_owned(),
        key: key.to_owned(),
        source: Arc::clone(source),
        function: "onIncoming".to_owned(),
        args: vec![msg.clone()],
        with_ctx: true,
        kv: None,
        limits: Limits::default(),
        max_output_bytes: 64 << 10,
    }
}

fn report(name: &str, value: f64) {
    println!("{name} {value:.0}");
}

fn per_second(calls: usize, elapsed: Duration) -> f64 {
    calls as f64 / elapsed.as_secs_f64()
}

async fn sequential(source: &Arc<str>, msg: &Value) {
    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        ..SandboxConfig::default()
    });
    let calls = 50_000;
    sandbox
        .call(hook_call("bench", source, msg))
        .await
        .expect("warm-up call");
    let started = Instant::now();
    for _ in 0..calls {
        let outcome = sandbox
            .call(hook_call("bench", source, msg))
            .await
            .expect("hook call");
        assert_eq!(outcome.value, json!({"reply": "hi"}));
    }
    report("hook_calls_per_s", per_second(calls, started.elapsed()));
}

async fn batched(sandbox: &Sandbox, name: &str, keys: usize, source: &Arc<str>, msg: &Value) {
    let batch = 1000;
    let rounds = 200;
    let keys: Vec<String> = (0..keys).map(|n| format!("bench:{n}")).collect();
    let make = || {
        (0..batch)
            .map(|n| hook_call(&keys[n % keys.len()], source, msg))
            .collect::<Vec<_>>()
    };
    for result in sandbox.call_batch(make()).await {
        result.expect("warm-up call");
    }
    let mut elapsed = Duration::ZERO;
    for _ in 0..rounds {
        let calls = make();
        let started = Instant::now();
        let results = sandbox.call_batch(calls).await;
        elapsed += started.elapsed();
        assert!(results.iter().all(Result::is_ok));
    }
    report(name, per_second(batch * rounds, elapsed));
}

/// Calls 1000 new keys one after another; returns the sandbox and µs per call.
async fn new_keys(max_pooled: usize, source: &Arc<str>, msg: &Value) -> (Sandbox, f64) {
    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        max_pooled,
        ..SandboxConfig::default()
    });
    let keys = 1000;
    let started = Instant::now();
    for n in 0..keys {
        sandbox
            .call(hook_call(&format!("script:{n}:1"), source, msg))
            .await
            .expect("hook call");
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / keys as f64;
    (sandbox, micros)
}

async fn instances(source: &Arc<str>, msg: &Value) {
    let (_, micros) = new_keys(0, source, msg).await;
    report("instance_create_unpooled_us", micros);
    let rss_before = resident_bytes();
    let (sandbox, micros) = new_keys(SandboxConfig::default().max_pooled, source, msg).await;
    let rss_after = resident_bytes();
    report("instance_create_us", micros);
    let (count, bytes) = sandbox.pooled();
    report("pooled_instances", count as f64);
    report("bytes_per_instance", (bytes / count.max(1)) as f64);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let grown = after.saturating_sub(before);
        report("rss_bytes_per_instance", (grown / count.max(1)) as f64);
    }
}

/// The process's resident memory, from `/proc/self/status`.
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let source: Arc<str> = Arc::from(HOOK);
    let msg = message();
    runtime.block_on(async {
        sequential(&source, &msg).await;
        let one = Sandbox::new(SandboxConfig {
            threads: 1,
            ..SandboxConfig::default()
        });
        batched(&one, "hook_batch_calls_per_s", 1, &source, &msg).await;
        let all = Sandbox::new(SandboxConfig::default());
        batched(
            &all,
            "hook_batch_calls_per_s_all_threads",
            100,
            &source,
            &msg,
        )
        .await;
        instances(&source, &msg).await;
    });
}
