//! Jobs: users' functions run on demand, off the message path.
//!
//! `POST /jobs` (the gateway) stores a job and publishes a [`JobRequest`] on
//! `<prefix>.jobs.requests`, keyed by job id. Workers, one consumer group, take
//! requests one at a time, run `export function main(input, credentials)` in the
//! [`chorus_sandbox`] under the job's limits, and publish a [`JobOutcome`] on
//! `<prefix>.jobs.results`; only then do they commit the request, so a worker that dies
//! mid-job leaves it to be delivered to another. The results recorder (a consumer group
//! on the results topic, run with the gateway role) writes each outcome to the store,
//! where the first one recorded wins: one visible result per job even when a job ran
//! twice. The observer reads both topics, measures the load and decides how many workers
//! there should be.
//!
//! # Layout
//!
//! - [`worker`]: the worker loop and how one job is run.
//! - [`results`]: the results recorder.
//! - [`pool`]: a node's worker tasks, resized by the observer in embedded mode.
//! - [`observer`]: measurements, the scaling decision ([`observer::autoscale`], a pure
//!   function of samples, time and configuration) and its loop.
//! - [`git`]: fetching job code from git repositories, cached per URL and commit id.
//! - [`crypto`]: the credentials format (AES-256-GCM, bound to their owner).
//!
//! [`JobRequest`]: chorus_core::event::JobRequest
//! [`JobOutcome`]: chorus_core::event::JobOutcome

pub mod crypto;
pub mod git;
pub mod observer;
pub mod pool;
pub mod results;
pub mod worker;

use chorus_config::JobsConfig;
use chorus_core::event::{Delivery, encode};
use chorus_core::model::Job;
use chorus_core::topics::Topics;
use chorus_core::{NodeId, UserId};
use chorus_log::{EventLog, HandlerError, LogError, Outgoing, Subscription};
use chorus_registry::Registry;
use chorus_sandbox::Sandbox;
use chorus_store::{Store, StoreError};
use std::sync::Arc;

/// Why a jobs loop stopped (its supervisor restarts it).
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The sandbox could not run anything (it is shutting down).
    #[error("sandbox unavailable: {0}")]
    Sandbox(String),
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HandlerError for JobsError {
    /// Only the database may refuse a job or an outcome for good; the log and the
    /// sandbox fail when they are down.
    fn is_poison(&self) -> bool {
        match self {
            Self::Store(e) => !e.is_unavailable(),
            Self::Log(_) | Self::Sandbox(_) => false,
        }
    }
}

/// The subscription of a jobs consumer: `name` in logs and metrics, `group` on `topic`,
/// `batch` records at a time, with what it cannot handle set aside.
fn subscription(
    ctx: &JobsContext,
    name: &'static str,
    group: String,
    topic: String,
    batch: usize,
) -> Subscription {
    Subscription {
        name,
        group,
        topics: vec![topic],
        batch,
        dead_letter: Some(ctx.topics.dead_letter()),
    }
}

/// What the workers, the recorder and the observer share. Cheap to clone.
#[derive(Clone)]
pub struct JobsContext {
    /// This node.
    pub node: NodeId,
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// The database.
    pub store: Arc<dyn Store>,
    /// Where the owners' sessions are (for `job` frames).
    pub registry: Arc<dyn Registry>,
    /// Topic names.
    pub topics: Topics,
    /// The sandbox jobs run in (separate from the message hooks' one, so that a long
    /// job never delays a message).
    pub sandbox: Sandbox,
    /// Limits, git, credentials and observer settings.
    pub config: Arc<JobsConfig>,
    /// The credentials key, if the server has one.
    pub key: Option<crypto::Key>,
    /// Git checkouts, cached per URL and commit.
    pub git: Arc<git::GitCache>,
}

/// Consumer group of the workers on the requests topic.
pub fn workers_group(topics: &Topics) -> String {
    format!("{}.workers", topics.jobs_requests())
}

/// Tells the owner's sessions, wherever they are, that `job` changed. Best effort: the
/// status is in the store either way, so a failure is logged, not returned.
pub async fn notify_owner(ctx: &JobsContext, owner: UserId, job: &Job) {
    let nodes = match ctx.registry.locate(&[owner]).await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "job frame not sent");
            return;
        }
    };
    let records: Vec<Outgoing> = nodes
        .into_iter()
        .map(|(node, recipients)| {
            let event = Delivery::Job {
                job: job.clone(),
                recipients,
            };
            Outgoing::new(
                ctx.topics.deliver(&node),
                job.id.0.as_bytes().to_vec(),
                encode(&event),
            )
        })
        .collect();
    if records.is_empty() {
        return;
    }
    if let Err(e) = ctx.log.publish(records).await {
        tracing::warn!(job_id = %job.id, error = %e, "job frame not sent");
    }
}
