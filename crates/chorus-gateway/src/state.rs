//! What every handler and session shares.

use crate::auth::{Hashing, Tokens};
use crate::sessions::Sessions;
use crate::throttle::AuthLimits;
use chorus_config::{Limits, Registration};
use chorus_core::ratelimit::RateLimiter;
use chorus_core::topics::Topics;
use chorus_core::{NodeId, UserId};
use chorus_log::EventLog;
use chorus_registry::Registry;
use chorus_store::Directory;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The gateway's shared state.
pub struct AppState {
    /// This node.
    pub node: NodeId,
    /// Topic names.
    pub topics: Topics,
    /// Partitions of the delivery topic.
    pub partitions: u32,
    /// Client limits.
    pub limits: Limits,
    /// Whether direct conversations make contacts (`presence.through_direct`).
    pub presence_through_direct: bool,
    /// Users' scripts: the sandbox, limits and state.
    pub engine: chorus_automation::Engine,
    /// Database with the membership cache.
    pub directory: Directory,
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// Session locations.
    pub registry: Arc<dyn Registry>,
    /// Access tokens.
    pub tokens: Tokens,
    /// OIDC access tokens, when an issuer is configured.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Local sessions.
    pub sessions: Sessions,
    /// Send rate limits, per user; shared with the automation stages of this process,
    /// so that what a user's scripts send counts against the same rate.
    pub limiter: Arc<RateLimiter<UserId>>,
    /// `typing` and `read` frame limits, per user.
    pub notices: RateLimiter<UserId>,
    /// Password hashing, with its bounded queue.
    pub hashing: Hashing,
    /// Limits on signing up and signing in.
    pub auth_limits: AuthLimits,
    /// Who may sign up with a password.
    pub registration: Registration,
    /// How long an invite stays valid.
    pub invite_ttl: Duration,
    /// Users with a dry run under way (one each).
    pub dry_runs: crate::automation::DryRuns,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Cancelled when the node shuts down: sessions close with "going away".
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Limits and settings of jobs.
    pub jobs: Arc<chorus_config::JobsConfig>,
    /// The credentials key, if the server has one: the gateway seals credentials for
    /// their owner with it (`POST /jobs/credentials`).
    pub jobs_key: Option<chorus_jobs::crypto::Key>,
    /// The observer's latest report.
    pub observer: crate::jobs::ObserverView,
    /// Where attachments' bytes are.
    pub files: chorus_files::Files,
    /// Thumbnails being made at once, at most.
    pub thumbnails: Arc<tokio::sync::Semaphore>,
}
