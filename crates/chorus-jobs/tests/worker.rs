//! Workers on the in-process log: a worker killed mid-job leaves the job to another,
//! and one result is visible however many outcomes arrive.

use chorus_config::JobsConfig;
use chorus_core::event::{Delivery, JobOutcome, JobRequest, decode, encode};
use chorus_core::model::{Job, JobSource, JobStatus};
use chorus_core::topics::Topics;
use chorus_core::{JobId, NodeId, SessionId};
use chorus_jobs::results::{record_outcome, run_recorder};
use chorus_jobs::worker::run_worker;
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
use std::time::Duration;
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
    let config = JobsConfig::default();
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
        git: Arc::new(GitCache::new(
            dir.path().join("git"),
            vec![],
            1,
            Duration::from_secs(1),
            1,
        )),
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
        let job = Job {
            id: JobId::new(),
            status: JobStatus::Queued,
            source: JobSource::Script(source.into()),
            cpu_ms: 5000,
            memory_bytes: 16 << 20,
            submitted_at: Utc::now(),
            started_at: None,
            finished_at: None,
        };
        self.ctx.store.create_job(self.owner, &job).await.unwrap();
        let request = JobRequest {
            job_id: job.id,
            owner_id: self.owner,
            source: job.source.clone(),
            input: serde_json::json!({"ms": 300}),
            credentials: None,
            cpu_ms: job.cpu_ms,
            memory_bytes: job.memory_bytes,
            submitted_at: job.submitted_at,
        };
        let record = Outgoing::new(
            self.ctx.topics.jobs_requests(),
            job.id.0.as_bytes().to_vec(),
            encode(&request),
        );
        self.ctx.log.publish(vec![record]).await.unwrap();
        job.id
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
