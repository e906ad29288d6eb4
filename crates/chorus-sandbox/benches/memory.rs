//! Resident memory of a process whose scripts keep large module state (issue 23), through
//! the public API. Linux only (it reads `/proc/self/statm`).
//!
//! `cargo bench -p chorus-sandbox --bench memory` prints one `name value` line per
//! measurement, resident megabytes:
//!
//! - `rss_start_mb`: before anything runs.
//! - `rss_array_unbounded_mb`: after eight calls each keeping a 240 MiB array in a
//!   module variable (the attack), in a pool bounded by count only (as before issue 23);
//!   the instances stay pooled.
//! - `rss_array_capped_mb`: the same eight calls with the default caps: each instance
//!   grew past `max_instance_bytes` and was dropped when it went back.
//! - `rss_objects_capped_mb`: eight calls each keeping a million small objects, each
//!   followed by a call of a small script that stays pooled (so live instances sit
//!   after the freed ones in the thread's heap), with the default caps.
//! - `pooled_mb`: what the pool holds then, as it measures it.
//!
//! Each scenario runs in a process of its own (this program again, told which by a
//! `--scenario=NAME` argument): a sandbox frees its instances on its own thread after
//! it is dropped, so one scenario's memory would still be there in the next.

use std::sync::Arc;

use chorus_sandbox::{Call, Limits, Sandbox, SandboxConfig};

/// The argument that makes this program run one scenario.
const SCENARIO: &str = "--scenario=";

const ARRAY: &str = "let kept; export function f() { kept = new Array(15e6).fill(1); }";
const OBJECTS: &str = "let kept = []; export function f() { for (let i = 0; i < 1e6; i++) kept.push({ i, s: 'v' + i }); }";
const SMALL: &str = "let seen = 0; export function f() { seen += 1; }";

fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / 1e6
}

fn report(name: &str, value: f64) {
    println!("{name} {value:.0}");
}

fn call(owner: &str, key: &str, source: &Arc<str>) -> Call {
    Call {
        owner: owner.to_owned(),
        key: key.to_owned(),
        source: Arc::clone(source),
        function: "f".to_owned(),
        args: Vec::new(),
        with_ctx: false,
        kv: None,
        limits: Limits {
            memory_bytes: 512 << 20,
            cpu: std::time::Duration::from_secs(30),
            ..Limits::default()
        },
        max_output_bytes: 1024,
    }
}

/// Eight calls of `big` (one sandbox thread, eight owners), each followed by one of
/// `small` when given; returns the sandbox, still holding whatever it pooled.
async fn hoard(config: SandboxConfig, big: &str, small: Option<&str>) -> Sandbox {
    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        ..config
    });
    let big: Arc<str> = Arc::from(big);
    let small = small.map(Arc::<str>::from);
    for n in 0..8 {
        let owner = format!("user-{n}");
        sandbox
            .call(call(&owner, "big", &big))
            .await
            .expect("the big call");
        if let Some(small) = &small {
            sandbox
                .call(call(&owner, "small", small))
                .await
                .expect("the small call");
        }
    }
    sandbox
}

fn main() {
    let scenario = std::env::args().find_map(|a| a.strip_prefix(SCENARIO).map(str::to_owned));
    match scenario {
        Some(scenario) => run(&scenario),
        None => {
            let program = std::env::current_exe().expect("this program's path");
            for scenario in ["start", "array_unbounded", "array_capped", "objects_capped"] {
                let status = std::process::Command::new(&program)
                    .arg(format!("{SCENARIO}{scenario}"))
                    .status()
                    .expect("the scenario runs");
                assert!(status.success(), "{scenario}: {status}");
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run(scenario: &str) {
    let unbounded = SandboxConfig {
        max_pooled_bytes: usize::MAX,
        max_owner_bytes: usize::MAX,
        max_instance_bytes: usize::MAX,
        ..SandboxConfig::default()
    };
    let (config, big, small) = match scenario {
        "start" => return report("rss_start_mb", rss_mb()),
        "array_unbounded" => (unbounded, ARRAY, None),
        "array_capped" => (SandboxConfig::default(), ARRAY, None),
        _ => (SandboxConfig::default(), OBJECTS, Some(SMALL)),
    };
    let sandbox = hoard(config, big, small).await;
    report(&format!("rss_{scenario}_mb"), rss_mb());
    report("pooled_mb", sandbox.pooled().1 as f64 / 1e6);
}
