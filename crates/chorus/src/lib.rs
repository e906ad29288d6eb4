//! chorus: a chat platform whose roles cooperate through an event log.
//!
//! This crate composes the roles into a node. `main` parses the command line and
//! calls [`node::Node::build`] and [`node::Node::run`]; tests do the same with their
//! own configuration and shutdown token.
//!
//! Layout:
//! - [`cli`]: commands and flags (`chorus serve`, …), each flag also an environment
//!   variable.
//! - [`backends`]: resolves `memory://`, `sqlite://`, … URLs to the backends compiled in.
//! - [`node`]: builds the roles a node runs and runs them until shutdown.
//! - [`serve`]: the HTTP server, with limits on connections and slow clients.
//! - [`telemetry`]: logs and metrics setup.
//! - [`users`]: `chorus users`, accounts read from the database without a server.

pub mod backends;
pub mod cli;
pub mod node;
pub mod serve;
pub mod telemetry;
pub mod users;
