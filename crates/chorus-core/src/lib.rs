//! The vocabulary of chorus, shared by every role, with no I/O.
//!
//! Layout:
//! - [`body`]: what makes a message body storable, one check for every sender.
//! - [`mentions`]: the `@username` tokens of a body.
//! - [`ids`]: typed identifiers (users, conversations, messages, sessions, nodes).
//! - [`error`]: the stable error codes of the public protocol and their HTTP statuses.
//! - [`model`]: the public shapes of users, conversations, messages, scripts and jobs.
//! - [`wire`]: the WebSocket frames, client to server and server to client.
//! - [`event`]: the envelopes that travel on the event log between roles.
//! - [`topics`]: the names of the log's topics.
//! - [`ratelimit`]: token buckets by key, behind every rate limit.

pub mod body;
pub mod error;
pub mod event;
pub mod ids;
pub mod mentions;
pub mod model;
pub mod ratelimit;
pub mod topics;
pub mod wire;

pub use error::ErrorCode;
pub use ids::{
    AttachmentId, ConversationId, JobId, MessageId, NodeId, ScriptId, SessionId, UserId,
};
