//! The results recorder: writes each outcome on the results topic to the store and
//! tells the owner. The store keeps the first result of a job
//! ([`chorus_store::JobStore::finish_job`]), so redelivered or duplicated outcomes
//! (a job run twice after its worker died) change nothing visible.

use crate::{JobsContext, JobsError, notify_owner, subscription};
use chorus_core::event::{JobOutcome, decode};
use chorus_log::consume::payload;
use chorus_log::{consume, each};
use chorus_store::FinishedJob;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Outcomes fetched per batch.
const BATCH: usize = 256;

/// Consumer group of the recorders on the results topic.
pub fn recorders_group(ctx: &JobsContext) -> String {
    format!("{}.recorder", ctx.topics.jobs_results())
}

/// Records outcomes until `stop`; commits a batch once all of it is stored.
pub async fn run_recorder(ctx: JobsContext, stop: CancellationToken) -> Result<(), JobsError> {
    let topic = ctx.topics.jobs_results();
    let sub = subscription(&ctx, "jobs-results", recorders_group(&ctx), topic, BATCH);
    let log = ctx.log.clone();
    let ctx = Arc::new(ctx);
    let record = each(move |outcome: JobOutcome| {
        let ctx = ctx.clone();
        async move { record_outcome(&ctx, &outcome).await.map(|()| Vec::new()) }
    });
    consume(log, sub, payload(decode), record, stop.cancelled()).await
}

/// Stores one outcome (unless the job already has a result) and tells the owner.
pub async fn record_outcome(ctx: &JobsContext, outcome: &JobOutcome) -> Result<(), JobsError> {
    if !outcome.ran {
        return Ok(());
    }
    let finished = FinishedJob {
        status: outcome.status,
        output: outcome.output.clone(),
        error: outcome.error.clone(),
        elapsed_ms: outcome.elapsed_ms,
        started_at: outcome.started_at,
        finished_at: outcome.finished_at,
    };
    match ctx.store.finish_job(outcome.job_id, &finished).await? {
        Some(stored) => notify_owner(ctx, stored.owner_id, &stored.job).await,
        None => {
            metrics::counter!("chorus_jobs_duplicate_results_total").increment(1);
            tracing::debug!(job_id = %outcome.job_id, worker = %outcome.worker, "job already had a result; this one is dropped");
        }
    }
    Ok(())
}
