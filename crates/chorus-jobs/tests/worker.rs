//! Workers on the in-process log: a worker killed mid-job leaves the job to another,
//! one result is visible however many outcomes arrive, and a git remote that never
//! answers holds a worker no longer than the git deadline.

use chorus_config::JobsConfig;
use chorus_core::event::{Delivery, JobOutcome, JobRequest, decode, encode};
use chorus_core::model::{GitSource, Job, JobSource, JobStatus};
use chorus_core::topics::Topics;
use chorus_core::{JobId, NodeId, SessionId};
use chorus_jobs::results::{record_outcome, run_recorder};
use chorus_jobs::worker::{execute, run_worker};
use chorus_jobs::{JobsContext, git::GitCache};
use chorus_log::memory::MemoryLog;
use chorus_log::{Consumer, EventLog, Outgoing};
use chorus_registry::Registry;
use chorus_registry::memory::MemoryRegistry;
use chorus_sandbox::{Sandbox, SandboxConfig};
use chorus_store::Store;
use chorus_store::sqlite::SqliteStore;
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long anything expected may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

struct Setup {
    ctx: JobsContext,
    /// The owner's session's node delivery topic, where `job` frames arrive.
    frames: Box<dyn Consumer>,
    owner: chorus_core::UserId,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

async fn setup_with(tune: impl FnOnce(&mut JobsConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
    let log: Arc<dyn EventLog> = Arc::new(MemoryLog::new());
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let topics = Topics::new("t");
    let node = NodeId("n1".into());
    for topic in [
        topics.jobs_requests(),
        topics.jobs_results(),
        topics.deliver(&node),
        topics.dead_letter(),
    ] {
        log.create_topic(&topic, 4).await.unwrap();
    }
    let owner = store.create_user("ada", "hash").await.unwrap().id;
    registry
        .register(owner, &node, SessionId::new())
        .await
        .unwrap();
    let frames = log
        .subscribe("frames", &[topics.deliver(&node)])
        .await
        .unwrap();
    let mut config = JobsConfig::default();
    tune(&mut config);
    let ctx = JobsContext {
        node,
        log,
        store,
        registry,
        topics,
        sandbox: Sandbox::new(SandboxConfig {
            threads: 2,
            ..Default::default()
        }),
        git: Arc::new(GitCache::new(dir.path().join("git"), &config)),
        config: Arc::new(config),
        key: None,
    };
    Setup {
        ctx,
        frames,
        owner,
        _dir: dir,
    }
}

impl Setup {
    async fn submit(&self, source: &str) -> JobId {
        let request = self.job(JobSource::Script(source.into())).await;
        let record = Outgoing::new(
            self.ctx.topics.jobs_requests(),
            request.job_id.0.as_bytes().to_vec(),
            encode(&request),
        );
        self.ctx.log.publish(vec![record]).await.unwrap();
        request.job_id
    }

    /// Stores a queued job of the owner's and returns its request, not yet published.
    async fn job(&self, source: JobSource) -> JobRequest {
        let job = Job {
            id: JobId::new(),
            status: JobStatus::Queued,
            source,
            cpu_ms: 5000,
            memory_bytes: 16 << 20,
            submitted_at: Utc::now(),
            started_at: None,
            finished_at: None,
        };
        self.ctx.store.create_job(self.owner, &job).await.unwrap();
        JobRequest {
            job_id: job.id,
            owner_id: self.owner,
            source: job.source.clone(),
            input: serde_json::json!({"ms": 300}),
            credentials: None,
            cpu_ms: job.cpu_ms,
            memory_bytes: job.memory_bytes,
            submitted_at: job.submitted_at,
        }
    }

    /// Waits for the `job` frame of `id` with `status`.
    async fn frame(&mut self, id: JobId, status: JobStatus) -> Job {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let batch = self.frames.next_batch(16).await.unwrap();
                self.frames.commit(&batch).await.unwrap();
                for r in &batch {
                    if let Ok(Delivery::Job { job, .. }) = decode::<Delivery>(&r.payload)
                        && job.id == id
                        && job.status == status
                    {
                        return job;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {status:?} frame for {id}"))
    }
}

const SLOW: &str = "export function main(input) { const end = Date.now() + input.ms; while (Date.now() < end) {} return 'done'; }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_leaves_it_to_another_and_one_result_is_visible() {
    let mut s = setup().await;
    let stop = CancellationToken::new();
    let recorder = tokio::spawn(run_recorder(s.ctx.clone(), stop.clone()));
    let id = s.submit(SLOW).await;

    let first = tokio::spawn(run_worker(s.ctx.clone(), "n1/0".into(), stop.clone()));
    s.frame(id, JobStatus::Running).await;
    // Killed while the job runs: it never publishes an outcome or commits the request.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!(
        s.ctx.store.job(id).await.unwrap().unwrap().job.status,
        JobStatus::Running
    );

    let second = tokio::spawn(run_worker(s.ctx.clone(), "n1/1".into(), stop.clone()));
    let done = s.frame(id, JobStatus::Succeeded).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    let result = s.ctx.store.job_result(id).await.unwrap().unwrap();
    assert_eq!(result.output, serde_json::json!("done"));

    // A late or duplicated outcome (the dead worker's, had it published) changes nothing.
    let late = JobOutcome {
        job_id: id,
        owner_id: s.owner,
        status: JobStatus::Failed,
        output: serde_json::Value::Null,
        error: None,
        elapsed_ms: 1,
        submitted_at: Utc::now(),
        started_at: Utc::now(),
        finished_at: Utc::now(),
        worker: "n1/0".into(),
        ran: true,
    };
    record_outcome(&s.ctx, &late).await.unwrap();
    assert_eq!(s.ctx.store.job_result(id).await.unwrap().unwrap(), result);
    assert_eq!(s.ctx.store.jobs_of(s.owner, 10).await.unwrap().len(), 1);

    stop.cancel();
    second.await.unwrap().unwrap();
    recorder.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_job_is_not_run() {
    let mut s = setup().await;
    let stop = CancellationToken::new();
    let gone = s.submit(SLOW).await;
    s.ctx.store.delete_job(gone).await.unwrap();
    let next = s.submit("export function main() { return 2; }").await;
    let worker = tokio::spawn(run_worker(s.ctx.clone(), "n1/0".into(), stop.clone()));
    let recorder = tokio::spawn(run_recorder(s.ctx.clone(), stop.clone()));
    s.frame(next, JobStatus::Succeeded).await;
    assert!(s.ctx.store.job(gone).await.unwrap().is_none());
    stop.cancel();
    worker.await.unwrap().unwrap();
    recorder.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_remote_that_never_answers_fails_the_job_within_the_deadline() {
    /// The deadline of the test, jobs.git_timeout_secs.
    const DEADLINE: Duration = Duration::from_secs(1);
    let s = setup_with(|c| {
        c.git_schemes = vec!["http".into()];
        c.git_private_hosts = vec!["127.0.0.1".into()];
        c.git_timeout_secs = DEADLINE.as_secs();
    })
    .await;
    // Silent after the connection, and silent after the response headers.
    let stalls: [&[u8]; 2] = [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nContent-Length: 100000\r\n\r\n001e# service=git-upload-pack\n",
    ];
    for answer in stalls {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/r.git", listener.local_addr().unwrap());
        let (closed, was_closed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(answer).await.unwrap();
            let mut request = [0; 4096];
            while conn.read(&mut request).await.is_ok_and(|n| n > 0) {}
            let _ = closed.send(());
        });
        let request = s
            .job(JobSource::Git(GitSource {
                url,
                reference: "main".into(),
                path: "a.js".into(),
            }))
            .await;

        let started = Instant::now();
        let outcome = execute(&s.ctx, &request, "n1/0").await.unwrap();
        let took = started.elapsed();

        assert_eq!(outcome.status, JobStatus::Failed);
        let error = outcome.error.unwrap();
        assert_eq!(error.code, "git");
        assert_eq!(error.message, "git took longer than 1 s");
        // The deadline, plus room for a loaded machine to start git and kill it.
        assert!(
            took >= DEADLINE && took < DEADLINE + Duration::from_secs(2),
            "{took:?}"
        );
        // Git's HTTP helper was killed with it, not left holding the connection until
        // curl's own low-speed limit (10 s) ends it.
        tokio::time::timeout(Duration::from_secs(5), was_closed)
            .await
            .expect("the connection is closed")
            .unwrap();
    }
}
