//! Integration tests: a real node on a random port, real HTTP and WebSocket clients.
//!
//! One test binary (`tests/api`), one module per area; [`helpers`] holds the harness.

mod attachments;
mod auth;
mod automation;
mod guarantees;
mod helpers;
mod jobs;
mod lifecycle;
mod mentions;
mod oidc;
mod protocol;
mod replies;
mod security;
