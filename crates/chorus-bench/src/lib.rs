//! `chorus bench`: a load generator for chorus servers.
//!
//! It signs in `--users` users (registering them, or logging in when an earlier run
//! did), puts them in direct pairs or groups, opens one WebSocket session per user and
//! then drives one scenario:
//!
//! - open loop (default): sends at `--rate` per second in total, on a schedule that
//!   never waits for replies; every member session records the latency from the
//!   scheduled send time (carried in the body) to delivery;
//! - closed loop (`--closed-loop`): each sender keeps `--in-flight` messages
//!   outstanding;
//! - idle (`--idle`): only holds the connections, for the connect rate and the
//!   server's memory per connection;
//! - reconnect storm (`--reconnect-storm`): after the warm-up every client drops and
//!   reconnects at once, resuming with `sync`; no message may be missed.
//!
//! The report goes to stdout as a table and, with `--json`, to a file.
//!
//! `--protocol xmpp` drives ejabberd (XMPP over WebSocket, RFC 7395) and
//! `--protocol relay` the bare relay of this crate ([`serve_relay`], the `chorus-relay`
//! binary) through the same scenarios, for side-by-side figures.

mod args;
mod client;
mod codec;
mod peer;
mod relay;
mod report;
mod scenarios;
mod setup;
mod stats;
mod xmpp;

pub use args::{BenchArgs, ConversationMode, Protocol};
pub use relay::serve_relay;

/// Runs the benchmark described by `args` and prints its report. Fails when the
/// server cannot be reached or no session can be opened; missing deliveries are
/// reported, not an error.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    scenarios::run(args).await
}
