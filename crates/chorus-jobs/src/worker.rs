//! The worker: one member of the workers' consumer group, one job at a time.
//!
//! For each request it marks the job running (and tells the owner), loads the code
//! (inline, or from git), decrypts the credentials, calls `main(input, credentials)` in
//! the sandbox under the job's limits, publishes the outcome, and only then commits the
//! request. A worker that dies before the commit leaves the request to the member that
//! takes over its partition, which runs it again; the recorder keeps the first result.
//! Credentials open only for the job's owner (they are sealed for a user, see
//! [`crate::crypto`]), exist in clear only inside [`execute`] and the sandbox call, and
//! are never logged.

use crate::crypto::JOB_CREDENTIALS;
use crate::{JobsContext, JobsError, notify_owner, subscription, workers_group};
use chorus_core::event::{JobOutcome, JobRequest, decode, encode};
use chorus_core::model::{JobError, JobSource, JobStatus};
use chorus_log::consume::payload;
use chorus_log::{Outgoing, consume, each};
use chorus_sandbox::{Call, Limits, RunError};
use chrono::Utc;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs jobs from the requests topic until `stop` (checked between jobs: a job that has
/// started is finished first). `name` identifies the worker in outcomes.
pub async fn run_worker(
    ctx: JobsContext,
    name: String,
    stop: CancellationToken,
) -> Result<(), JobsError> {
    let topic = ctx.topics.jobs_requests();
    // One request at a time: a request fetched is a request this worker holds.
    let sub = subscription(&ctx, "worker", workers_group(&ctx.topics), topic, 1);
    let log = ctx.log.clone();
    let (ctx, name) = (Arc::new(ctx), Arc::<str>::from(name));
    let work = each(move |request: JobRequest| {
        let (ctx, name) = (ctx.clone(), name.clone());
        async move {
            let outcome = execute(&ctx, &request, &name).await;
            outcome.map(|outcome| {
                let key = outcome.job_id.0.as_bytes().to_vec();
                vec![Outgoing::new(
                    ctx.topics.jobs_results(),
                    key,
                    encode(&outcome),
                )]
            })
        }
    });
    consume(log, sub, payload(decode), work, stop.cancelled()).await
}

/// Runs one job and says how it ended. `Err` only when nothing could be decided (the
/// database or the sandbox is unavailable): the request is then not committed.
pub async fn execute(
    ctx: &JobsContext,
    request: &JobRequest,
    worker: &str,
) -> Result<JobOutcome, JobsError> {
    let started_at = Utc::now();
    let mut outcome = JobOutcome {
        job_id: request.job_id,
        owner_id: request.owner_id,
        status: JobStatus::Failed,
        output: Value::Null,
        error: None,
        elapsed_ms: 0,
        submitted_at: request.submitted_at,
        started_at,
        finished_at: started_at,
        worker: worker.to_owned(),
        ran: false,
    };
    let Some(stored) = ctx.store.start_job(request.job_id, started_at).await? else {
        // Deleted, or finished by a worker that died before committing.
        outcome.error = Some(error("gone", "the job was deleted or has already finished"));
        return Ok(outcome);
    };
    outcome.ran = true;
    notify_owner(ctx, request.owner_id, &stored.job).await;
    metrics::counter!("chorus_jobs_started_total").increment(1);
    match run(ctx, request).await {
        Ok((value, elapsed)) => {
            outcome.status = JobStatus::Succeeded;
            outcome.output = value;
            outcome.elapsed_ms = millis(elapsed);
        }
        Err(Failed::Run(RunError::Unavailable(why), _)) => return Err(JobsError::Sandbox(why)),
        Err(Failed::Run(e, elapsed)) => {
            outcome.status = if e == RunError::Timeout {
                JobStatus::TimedOut
            } else {
                JobStatus::Failed
            };
            outcome.error = Some(error(e.code(), &e.to_string()));
            outcome.elapsed_ms = millis(elapsed);
        }
        Err(Failed::Setup(e)) => outcome.error = Some(e),
    }
    outcome.finished_at = Utc::now();
    metrics::counter!("chorus_jobs_finished_total", "status" => outcome.status.as_str())
        .increment(1);
    metrics::histogram!("chorus_job_duration_seconds").record(outcome.elapsed_ms as f64 / 1000.0);
    Ok(outcome)
}

enum Failed {
    /// Before the call: the code or the credentials could not be had.
    Setup(JobError),
    /// The call failed.
    Run(RunError, Duration),
}

async fn run(ctx: &JobsContext, request: &JobRequest) -> Result<(Value, Duration), Failed> {
    let (key, source) = match &request.source {
        JobSource::Script(text) => (
            // Instances are reused for the same owner and source only: module state
            // never crosses from one user to another.
            format!(
                "job:{}:{}",
                request.owner_id,
                uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, text.as_bytes())
            ),
            Arc::from(text.as_str()),
        ),
        JobSource::Git(git) => {
            let module = ctx
                .git
                .load(git)
                .await
                .map_err(|e| Failed::Setup(error("git", &e.to_string())))?;
            (
                format!(
                    "job:{}:git:{}:{}",
                    request.owner_id, module.commit, git.path
                ),
                module.source,
            )
        }
    };
    let credentials = match &request.credentials {
        None => Value::Null,
        Some(sealed) => {
            let key = ctx.key.as_ref().ok_or_else(|| {
                Failed::Setup(error(
                    "credentials_unavailable",
                    "the server has no credentials key (CHORUS_JOBS_KEY)",
                ))
            })?;
            // Sealed for someone else, the value does not open: the owner learns that,
            // and nothing of the value or of whose it is.
            let clear = key
                .open(JOB_CREDENTIALS, request.owner_id, sealed)
                .map_err(|e| Failed::Setup(error("bad_credentials", &e.to_string())))?;
            Value::String(String::from_utf8(clear).map_err(|_| {
                Failed::Setup(error(
                    "bad_credentials",
                    "the credentials are not UTF-8 text",
                ))
            })?)
        }
    };
    let call = Call {
        owner: request.owner_id.to_string(),
        key,
        source,
        function: "main".into(),
        args: vec![request.input.clone(), credentials],
        with_ctx: false,
        kv: None,
        limits: Limits {
            memory_bytes: usize::try_from(request.memory_bytes).unwrap_or(usize::MAX),
            cpu: Duration::from_millis(request.cpu_ms),
            // A job has no `ctx`, so no host calls.
            ..Limits::default()
        },
        max_output_bytes: ctx.config.max_output_bytes,
    };
    match ctx.sandbox.call(call).await {
        Ok(outcome) => Ok((outcome.value, outcome.elapsed)),
        Err(failure) => Err(Failed::Run(failure.error, failure.elapsed)),
    }
}

fn error(code: &str, message: &str) -> JobError {
    JobError {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
