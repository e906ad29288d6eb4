//! Jobs end to end: submitted over HTTP, run by the embedded workers, recorded, and
//! announced to the owner's sessions with `job` frames (which the tests wait on: no
//! polling, no sleeps).

use crate::helpers::{TestApp, TestUser, WsClient};
use base64::Engine;
use chorus_jobs::crypto::{JOB_CREDENTIALS, MAX_PLAINTEXT_BYTES};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn jobs_config(c: &mut chorus_config::Config) {
    c.jobs.key = Some(KEY.into());
    c.jobs.git_schemes = vec!["file".into()];
}

async fn jobs_app() -> TestApp {
    TestApp::spawn_with(jobs_config).await
}

async fn submit(app: &TestApp, user: &TestUser, body: Value) -> String {
    let (status, body) = app.post(Some(&user.token), "/api/v1/jobs", body).await;
    assert_eq!(status, 202, "{body}");
    body["job_id"].as_str().unwrap().to_owned()
}

/// Waits for the `job` frame saying `id` finished; returns the frames of `id` seen.
async fn finished(ws: &mut WsClient, id: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let frame = ws.expect("job").await;
        if frame["job"]["id"] != id {
            continue;
        }
        let status = frame["job"]["status"].as_str().unwrap().to_owned();
        seen.push(frame);
        if !matches!(status.as_str(), "queued" | "running") {
            return seen;
        }
    }
}

/// Submits `body`, waits for the end, returns the result.
async fn run(app: &TestApp, user: &TestUser, ws: &mut WsClient, body: Value) -> (String, Value) {
    let id = submit(app, user, body).await;
    finished(ws, &id).await;
    let (status, result) = app
        .get(&user.token, &format!("/api/v1/jobs/{id}/result"))
        .await;
    assert_eq!(status, 200, "{result}");
    (id, result)
}

fn script(source: &str, input: Value) -> Value {
    json!({ "source": { "script": source }, "input": input })
}

#[tokio::test]
async fn a_job_is_queued_run_and_its_result_read_then_erased() {
    let app = jobs_app().await;
    let ada = app.register("ada").await;
    let mut ws = app.ws(&ada).await;
    let id = submit(
        &app,
        &ada,
        script(
            "export function main(input) { return { sum: input.a + input.b }; }",
            json!({"a": 2, "b": 3}),
        ),
    )
    .await;
    let frames = finished(&mut ws, &id).await;
    let statuses: Vec<&str> = frames
        .iter()
        .map(|f| f["job"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["running", "succeeded"]);

    let (status, job) = app.get(&ada.token, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], "succeeded");
    assert!(job["started_at"].is_string() && job["finished_at"].is_string());
    assert_eq!(job["cpu_ms"], 5000);
    assert_eq!(job["memory_bytes"], 16 << 20);
    let (status, result) = app
        .get(&ada.token, &format!("/api/v1/jobs/{id}/result"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["output"], json!({"sum": 5}));
    assert!(result["error"].is_null());
    assert!(result["elapsed_ms"].is_u64() && result["queued_ms"].is_u64());

    let (_, list) = app.get(&ada.token, "/api/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(list["jobs"][0]["id"], id.as_str());

    let (status, _) = app.delete(&ada.token, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, 204);
    for path in [
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/jobs/{id}/result"),
    ] {
        assert_eq!(app.get(&ada.token, &path).await.0, 404, "{path}");
    }
    let (_, list) = app.get(&ada.token, "/api/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]));
}

#[tokio::test]
async fn a_result_is_a_conflict_until_the_job_ends() {
    let app = jobs_app().await;
    let ada = app.register("ada").await;
    let mut ws = app.ws(&ada).await;
    let id = submit(
        &app,
        &ada,
        script(
            "export function main() { const end = Date.now() + 300; while (Date.now() < end) {} return 1; }",
            Value::Null,
        ),
    )
    .await;
    let (status, body) = app
        .get(&ada.token, &format!("/api/v1/jobs/{id}/result"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    finished(&mut ws, &id).await;
    let (status, _) = app
        .get(&ada.token, &format!("/api/v1/jobs/{id}/result"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn failures_are_reported_with_their_cause() {
    let app = jobs_app().await;
    let ada = app.register("ada").await;
    let mut ws = app.ws(&ada).await;

    let (_, r) = run(
        &app,
        &ada,
        &mut ws,
        script(
            "export function main() { throw new Error('nope'); }",
            Value::Null,
        ),
    )
    .await;
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"]["code"], "thrown");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("nope"),
        "{r}"
    );

    let mut body = script("export function main() { for (;;) {} }", Value::Null);
    body["cpu_ms"] = json!(200);
    let (_, r) = run(&app, &ada, &mut ws, body).await;
    assert_eq!(r["status"], "timed_out", "{r}");
    assert_eq!(r["error"]["code"], "timeout");

    let mut body = script(
        "export function main() { const a = []; for (;;) a.push(new Array(1e5).fill(1)); }",
        Value::Null,
    );
    body["memory_bytes"] = json!(1 << 20);
    let (_, r) = run(&app, &ada, &mut ws, body).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "out_of_memory");

    let (_, r) = run(
        &app,
        &ada,
        &mut ws,
        script("export function other() {}", Value::Null),
    )
    .await;
    assert_eq!(r["error"]["code"], "missing", "{r}");
    let (_, r) = run(
        &app,
        &ada,
        &mut ws,
        script("export function main( {", Value::Null),
    )
    .await;
    assert_eq!(r["error"]["code"], "compile", "{r}");

    // Refused before queueing: limits over the maxima, bad credentials, bad sources.
    for bad in [
        json!({"source": {"script": "export function main() {}"}, "cpu_ms": 10_000_000}),
        json!({"source": {"script": "export function main() {}"}, "memory_bytes": 1}),
        json!({"source": {"script": "export function main() {}"}, "credentials": "not base64!"}),
        json!({"source": {"script": ""}}),
        json!({"source": {"git": {"url": "https://example.com/r.git", "ref": "main", "path": "a.js"}}}),
        json!({"source": {"git": {"url": "file:///tmp/r", "ref": "main", "path": "../a.js"}}}),
        json!({"input": 1}),
    ] {
        let (status, body) = app
            .post(Some(&ada.token), "/api/v1/jobs", bad.clone())
            .await;
        assert_eq!(status, 400, "{bad} -> {body}");
    }
}

#[tokio::test]
async fn another_users_jobs_do_not_exist_for_them() {
    let app = jobs_app().await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let mut ws = app.ws(&ada).await;
    let (id, _) = run(
        &app,
        &ada,
        &mut ws,
        script("export function main() { return 'mine'; }", Value::Null),
    )
    .await;
    for path in [
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/jobs/{id}/result"),
    ] {
        let (status, body) = app.get(&bob.token, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert_eq!(
        app.delete(&bob.token, &format!("/api/v1/jobs/{id}"))
            .await
            .0,
        404
    );
    let (_, list) = app.get(&bob.token, "/api/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]));
    assert_eq!(
        app.get(&ada.token, &format!("/api/v1/jobs/{id}")).await.0,
        200
    );
    let (status, _) = app.get(&ada.token, "/api/v1/jobs/not-a-uuid").await;
    assert_eq!(status, 400);
}

/// Runs `git` in `dir`, panicking on failure.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn jobs_run_code_from_a_git_repository_at_a_ref() {
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::create_dir(dir.join("jobs")).unwrap();
    std::fs::write(
        dir.join("jobs/hello.js"),
        "export function main(input) { return 'hello ' + input.name + ' v1'; }",
    )
    .unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "v1"]);
    git(dir, &["tag", "v1"]);
    std::fs::write(
        dir.join("jobs/hello.js"),
        "export function main(input) { return 'hello ' + input.name + ' v2'; }",
    )
    .unwrap();
    git(dir, &["commit", "-q", "-am", "v2"]);
    let v2 = git(dir, &["rev-parse", "HEAD"]).trim().to_owned();
    let url = format!("file://{}", dir.display());

    let app = jobs_app().await;
    let ada = app.register("ada").await;
    let mut ws = app.ws(&ada).await;
    let job = |reference: &str, path: &str| json!({"source": {"git": {"url": url, "ref": reference, "path": path}}, "input": {"name": "ada"}});
    for (reference, expected) in [
        ("main", "hello ada v2"),
        ("v1", "hello ada v1"),
        (v2.as_str(), "hello ada v2"),
        ("main", "hello ada v2"),
    ] {
        let (_, r) = run(&app, &ada, &mut ws, job(reference, "jobs/hello.js")).await;
        assert_eq!(r["status"], "succeeded", "{reference}: {r}");
        assert_eq!(r["output"], expected);
    }
    let repos = app.data_dir.path().join("jobs/git/repos");
    let checkouts: Vec<_> = std::fs::read_dir(repos)
        .unwrap()
        .map(|url| url.unwrap().path().join(&v2))
        .collect();
    assert!(
        checkouts.len() == 1 && checkouts[0].is_dir(),
        "checkouts are cached by URL and commit id: {checkouts:?}"
    );

    let (_, r) = run(&app, &ada, &mut ws, job("nope", "jobs/hello.js")).await;
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"]["code"], "git");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ref \"nope\" not found"),
        "{r}"
    );
    let (_, r) = run(&app, &ada, &mut ws, job("main", "jobs/missing.js")).await;
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not found at commit"),
        "{r}"
    );
    let missing = json!({"source": {"git": {"url": format!("file://{}/nothing-here", dir.display()), "ref": "main", "path": "a.js"}}});
    let (_, r) = run(&app, &ada, &mut ws, missing).await;
    assert_eq!(r["error"]["code"], "git");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("repository not found"),
        "{r}"
    );
}

/// A repository in `dir` whose `main` holds `jobs/code.js` = `source`: its `file://`
/// URL and commit id.
fn repository(dir: &Path, source: &str) -> (String, String) {
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::create_dir(dir.join("jobs")).unwrap();
    std::fs::write(dir.join("jobs/code.js"), source).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "code"]);
    let commit = git(dir, &["rev-parse", "HEAD"]).trim().to_owned();
    (format!("file://{}", dir.display()), commit)
}

#[tokio::test]
async fn a_commit_id_alone_does_not_run_another_users_private_code() {
    let (ada_dir, bob_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ada_url, ada_commit) = repository(
        ada_dir.path(),
        "export function main() { return 'ada private code ran'; }",
    );
    let (bob_url, _) = repository(
        bob_dir.path(),
        "export function main() { return 'bob code ran'; }",
    );
    let job = |url: &str| json!({"source": {"git": {"url": url, "ref": ada_commit, "path": "jobs/code.js"}}});

    let app = jobs_app().await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let mut ada_ws = app.ws(&ada).await;
    let mut bob_ws = app.ws(&bob).await;
    let (_, r) = run(&app, &ada, &mut ada_ws, job(&ada_url)).await;
    assert_eq!(r["output"], "ada private code ran", "{r}");

    // Ada's checkout is cached. Bob has her commit id but not her repository: his own
    // repository does not hold the commit, and a URL that does not exist has nothing.
    let nowhere = format!("{bob_url}/nothing-here");
    for url in [bob_url.as_str(), nowhere.as_str()] {
        let (_, r) = run(&app, &bob, &mut bob_ws, job(url)).await;
        assert_eq!(r["status"], "failed", "{url}: {r}");
        assert_eq!(r["error"]["code"], "git", "{url}: {r}");
        assert!(r["output"].is_null(), "{url}: {r}");
        assert!(!r.to_string().contains("ada private"), "{url}: {r}");
    }
}

#[tokio::test]
async fn credentials_reach_main_and_nowhere_else() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Every log line of this test process, at every level.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    // Each test runs in its own process under nextest; under `cargo test` another
    // test may have set the subscriber first, and this test then checks the database only.
    let logging = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init()
        .is_ok();

    const SECRET: &str = "hunter2-Zq8vX1-top-secret";
    let app = jobs_app().await;
    let ada = app.register("ada").await;
    let mut ws = app.ws(&ada).await;
    let sealed = {
        let args = chorus::cli::JobsArgs {
            command: chorus::cli::JobsCommand::Encrypt {
                owner: ada.id.parse().unwrap(),
                key: KEY.into(),
            },
        };
        let mut out = Vec::new();
        args.run(&mut SECRET.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap().trim().to_owned()
    };
    assert!(!sealed.contains(SECRET));
    let mut body = script(
        "export function main(input, credentials) { return { ok: credentials.startsWith('hunter2-'), length: credentials.length }; }",
        json!({}),
    );
    body["credentials"] = json!(sealed);
    let (id, r) = run(&app, &ada, &mut ws, body).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["output"], json!({"ok": true, "length": SECRET.len()}));

    let (_, r) = run(
        &app,
        &ada,
        &mut ws,
        script("export function main(i, c) { return c; }", json!(null)),
    )
    .await;
    assert_eq!(r["output"], Value::Null, "no credentials: null");

    // Sealed with another key: a failure, not a leak.
    let other = chorus_jobs::crypto::Key::parse(&"ab".repeat(32)).unwrap();
    let mut body = script("export function main(i, c) { return c; }", json!(null));
    let owner = ada.id.parse().unwrap();
    let foreign = other.seal(JOB_CREDENTIALS, owner, SECRET.as_bytes());
    body["credentials"] = json!(foreign.unwrap());
    let (_, r) = run(&app, &ada, &mut ws, body).await;
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"]["code"], "bad_credentials");

    // The old format (no version, not bound to an owner) is refused by name.
    let old = base64::engine::general_purpose::STANDARD.encode([7u8; 40]);
    let mut body = script("export function main(i, c) { return c; }", json!(null));
    body["credentials"] = json!(old);
    let (status, body) = app.post(Some(&ada.token), "/api/v1/jobs", body).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("old unversioned format"),
        "{body}"
    );

    let (_, job) = app.get(&ada.token, &format!("/api/v1/jobs/{id}")).await;
    assert!(!job.to_string().contains(SECRET) && !job.to_string().contains(&sealed));
    let data_dir = app.stop().await;
    for entry in std::fs::read_dir(data_dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "the plaintext is in {}",
                path.display()
            );
        }
    }
    if logging {
        let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        assert!(logs.contains("listening"), "logs were captured");
        assert!(!logs.contains(SECRET), "the plaintext is in the logs");
    }
}

#[tokio::test]
async fn credentials_sealed_for_one_user_do_not_open_in_anothers_job() {
    const SECRET: &str = "ada-only-Xk42-api-token";
    let app = jobs_app().await;
    let ada = app.register("ada").await;
    let bob = app.register("bob").await;
    let mut ada_ws = app.ws(&ada).await;
    let mut bob_ws = app.ws(&bob).await;
    let (status, body) = app
        .post(
            Some(&ada.token),
            "/api/v1/jobs/credentials",
            json!({ "plaintext": SECRET }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sealed = body["credentials"].as_str().unwrap().to_owned();
    assert!(
        sealed.starts_with("v1.") && !sealed.contains(SECRET),
        "{sealed}"
    );

    // Bob puts Ada's sealed credentials in his own job, whose code would hand them back.
    let mut job = script("export function main(i, c) { return c; }", Value::Null);
    job["credentials"] = json!(sealed);
    let (id, r) = run(&app, &bob, &mut bob_ws, job.clone()).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["error"]["code"], "bad_credentials", "{r}");
    assert!(r["output"].is_null(), "{r}");
    let (_, seen) = app.get(&bob.token, &format!("/api/v1/jobs/{id}")).await;
    for said in [r.to_string(), seen.to_string()] {
        for leak in [SECRET, ada.id.as_str(), ada.username.as_str()] {
            assert!(!said.contains(leak), "{leak} in {said}");
        }
    }

    // Ada's own job gets them.
    let (_, r) = run(&app, &ada, &mut ada_ws, job).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["output"], SECRET);

    // Sealing is for signed-in users, and bounded.
    let plaintext = json!({ "plaintext": "x" });
    let (status, _) = app.post(None, "/api/v1/jobs/credentials", plaintext).await;
    assert_eq!(status, 401);
    let too_long = json!({ "plaintext": "x".repeat(MAX_PLAINTEXT_BYTES + 1) });
    let (status, body) = app
        .post(Some(&ada.token), "/api/v1/jobs/credentials", too_long)
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
}

#[tokio::test]
async fn credentials_cannot_be_sealed_without_a_server_key() {
    let app = TestApp::spawn().await;
    let ada = app.register("ada").await;
    let plaintext = json!({ "plaintext": "x" });
    let (status, body) = app
        .post(Some(&ada.token), "/api/v1/jobs/credentials", plaintext)
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CHORUS_JOBS_KEY"),
        "{body}"
    );
}

#[tokio::test]
async fn the_observer_reports_rates_and_only_administrators_configure_it() {
    let (app, root) = TestApp::spawn_with_admin("root", jobs_config).await;
    let ada = app.register("ada").await;
    let mut ws = app.ws(&ada).await;
    for _ in 0..3 {
        run(
            &app,
            &ada,
            &mut ws,
            script("export function main() { return 1; }", Value::Null),
        )
        .await;
    }
    let (status, o) = app.get(&ada.token, "/api/v1/observer").await;
    assert_eq!(status, 200, "{o}");
    for field in [
        "arrival_rate",
        "service_rate",
        "mean_response_ms",
        "p95_response_ms",
        "queue_depth",
        "workers",
    ] {
        assert!(o[field].is_number(), "{field}: {o}");
    }
    assert_eq!(o["config"]["min_workers"], 1);

    let (status, body) = app
        .put(
            &ada.token,
            "/api/v1/observer/config",
            json!({"max_workers": 3}),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    let root = root.token;
    let (status, body) = app
        .put(
            &root,
            "/api/v1/observer/config",
            json!({"max_workers": 3, "target_response_ms": 250}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["max_workers"], 3);
    assert_eq!(body["target_response_ms"], 250);
    let (status, _) = app
        .put(&root, "/api/v1/observer/config", json!({"min_workers": 5}))
        .await;
    assert_eq!(status, 400, "min above max");
    let (_, o) = app.get(&ada.token, "/api/v1/observer").await;
    assert_eq!(o["config"]["max_workers"], 3);

    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for gauge in ["chorus_jobs_submitted_total", "chorus_jobs_finished_total"] {
        assert!(metrics.contains(gauge), "{gauge} missing");
    }
}
