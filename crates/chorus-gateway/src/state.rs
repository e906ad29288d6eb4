//! What every handler and session shares.

use crate::auth::Tokens;
use crate::ratelimit::RateLimiter;
use crate::sessions::Sessions;
use chorus_config::Limits;
use chorus_core::NodeId;
use chorus_core::topics::Topics;
use chorus_log::EventLog;
use chorus_registry::Registry;
use chorus_store::Directory;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
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
    /// Send rate limits.
    pub limiter: RateLimiter,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Cancelled when the node shuts down: sessions close with "going away".
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Limits and settings of jobs.
    pub jobs: Arc<chorus_config::JobsConfig>,
    /// The observer's latest report.
    pub observer: crate::jobs::ObserverView,
}
