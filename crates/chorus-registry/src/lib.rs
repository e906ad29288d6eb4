//! Where users' sessions are: which gateway node holds which session.
//!
//! The gateway registers each session it accepts and removes it when it closes; the
//! route stage asks which nodes to send a delivery to; presence is derived from it (a
//! user is online while they have at least one session anywhere). Backends:
//!
//! - [`memory`]: in-process, the embedded default (`memory://`).
//! - [`redis`]: shared by a cluster, with heartbeats and expiry so a crashed node's
//!   sessions vanish on their own (`redis://`).
//!
//! The behaviour both share is tested once, for each, in `tests/contract.rs`.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use chorus_core::{NodeId, SessionId, UserId};
use std::collections::HashMap;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The backend failed or is unreachable. The text includes the backend's error,
    /// for logs that print one line; `source()` is that error.
    #[error("registry backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The registry holds something that is not a user id where one belongs.
    #[error("malformed user id {0:?} in the registry")]
    Malformed(String),
    /// A setting the backend cannot work with.
    #[error("registry settings: {0}")]
    Settings(String),
}

/// Result of the registry.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Session locations and presence.
///
/// Contract: after `register` returns, `locate` includes the session's node for the
/// user; after `unregister` (or, for shared backends, after the node's heartbeats stop
/// for the expiry period), it does not. `register` tells whether the user just came
/// online (had no session anywhere); `unregister` whether they just went offline.
/// Sessions on nodes whose heartbeats expired count nowhere, reaped or not, and each
/// going offline is reported once, by `unregister` or by `reap`.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Records that `node` holds `session` of `user`; `true` if the user was offline.
    async fn register(&self, user: UserId, node: &NodeId, session: SessionId) -> Result<bool>;
    /// Forgets a session; `true` if the user has no session left anywhere.
    async fn unregister(&self, user: UserId, node: &NodeId, session: SessionId) -> Result<bool>;
    /// Keeps `node`'s sessions alive (shared backends expire them otherwise). Nodes
    /// holding sessions call it periodically, well within the expiry period.
    async fn heartbeat(&self, node: &NodeId) -> Result<()>;
    /// Removes the sessions of nodes whose heartbeats have expired and returns the
    /// users who are offline as a result (so that someone can tell their contacts).
    /// Safe to call from several nodes at once: each user is returned at most once.
    async fn reap(&self) -> Result<Vec<UserId>>;
    /// The nodes holding sessions of `users`, with the users on each.
    async fn locate(&self, users: &[UserId]) -> Result<HashMap<NodeId, Vec<UserId>>>;
    /// Which of `users` have at least one session.
    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>>;
    /// Whether the backend answers.
    async fn health(&self) -> Result<()>;
}
