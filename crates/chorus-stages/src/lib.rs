//! The message stages: `automate-out`, `store`, `automate-in`, `route`.
//!
//! Each stage is a consumer group on its topic (`<prefix>.stage.<name>`). A stage reads
//! a batch, does its work, publishes what comes out (to the next stage on each event's
//! routing slip, or to gateway delivery topics), and only then commits the batch: a
//! crash replays the batch, and every stage is idempotent so a replay changes nothing.
//! Stages are stateless; run more instances (in this process or others) to scale.
//!
//! - [`automate_out`] / [`automate_in`]: users' outgoing and incoming scripts and
//!   auto-replies ([`scripts`] has what they share). Messages reach them only when
//!   someone in the conversation has automation: the routing slip skips them otherwise.
//! - [`store`]: gives each message the conversation's next `seq` and persists it.
//! - [`route`]: finds the nodes holding the recipients' sessions and sends one
//!   delivery event per node. Where it runs in the same process as the stage before
//!   it, that stage runs it on its own output ([`runner::chained`]).

pub mod automate_in;
pub mod automate_out;
pub mod route;
pub mod runner;
pub mod scripts;
pub mod store;

pub use runner::{StageContext, StageError, run_stage};
