//! Envelopes on the event log.
//!
//! Every record is an [`Envelope`]: a major version `v` and one event. A consumer that
//! meets an unknown `v` or an unreadable record sends it to the dead-letter topic
//! rather than crashing or dropping it.

use crate::model::{Attachment, Job, JobError, JobSource, JobStatus, Message, MessageKind, Origin};
use crate::topics::Stage;
use crate::{ConversationId, ErrorCode, JobId, MessageId, ScriptId, SessionId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The major version this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// A versioned record on the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Major version of the envelope.
    pub v: u32,
    /// The event.
    pub event: T,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record is not an envelope of the expected kind.
    #[error("malformed event: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The record was written by a newer (or older) major version.
    #[error("unsupported event version {0} (this build reads {ENVELOPE_VERSION})")]
    Version(u32),
}

/// Serializes an event into a versioned record.
pub fn encode<T: Serialize>(event: &T) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        v: ENVELOPE_VERSION,
        event,
    })
    .expect("events always serialize")
}

/// Reads a versioned record.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    match serde_json::from_slice::<Envelope<T>>(bytes) {
        Ok(env) if env.v == ENVELOPE_VERSION => Ok(env.event),
        Ok(env) => Err(DecodeError::Version(env.v)),
        Err(err) => match serde_json::from_slice::<Version>(bytes) {
            Ok(Version { v }) if v != ENVELOPE_VERSION => Err(DecodeError::Version(v)),
            _ => Err(DecodeError::Malformed(err)),
        },
    }
}

/// A message on its way through the stages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageEvent {
    /// Derived from sender and `client_msg_id`.
    pub message_id: MessageId,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// Where it goes; also the partition key on every topic.
    pub conversation_id: ConversationId,
    /// Who sent it.
    pub sender_id: UserId,
    /// The sender's session, when sent over WebSocket (for errors back to it).
    pub session_id: Option<SessionId>,
    /// The text (outgoing scripts may rewrite it).
    pub body: String,
    /// Files it carries: references checked by the gateway, never the bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The earlier message of the conversation it answers (checked by the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// Members it mentions: set by the store stage, from the body it stores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// A message, or a change to the message `target_id`.
    #[serde(default, skip_serializing_if = "MessageKind::is_text")]
    pub kind: MessageKind,
    /// For a change: the message it changes (checked by the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<MessageId>,
    /// For a reaction: the emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// For a reaction: whether it takes the sender's reaction back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
    /// Assigned by the store stage.
    pub seq: Option<i64>,
    /// When the gateway accepted it.
    pub sent_at: DateTime<Utc>,
    /// Person, script or auto-reply.
    pub origin: Origin,
    /// How many automation steps led here; bounds script chains.
    pub hops: u32,
    /// The routing slip: stages still to visit, next first.
    pub route: Vec<Stage>,
    /// Recipients whose incoming scripts dropped it: not delivered to them live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppress: Vec<UserId>,
    /// How many messages automation may still send because of this one, counting
    /// every later generation: what it sends splits the rest among them. `None` for a
    /// message a person sent, which starts with the configured
    /// `automation.fanout_budget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<u32>,
}

impl MessageEvent {
    /// The stored message this event describes, once it has a `seq`.
    pub fn to_message(&self) -> Option<Message> {
        Some(Message {
            message_id: self.message_id,
            client_msg_id: self.client_msg_id.clone(),
            conversation_id: self.conversation_id,
            seq: self.seq?,
            sender_id: self.sender_id,
            body: self.body.clone(),
            sent_at: self.sent_at,
            origin: self.origin,
            attachments: self.attachments.clone(),
            reply_to: self.reply_to,
            mentions: self.mentions.clone(),
            kind: self.kind,
            target_id: self.target_id,
            emoji: self.emoji.clone(),
            remove: self.remove,
            deleted: false,
            edited_at: None,
        })
    }

    /// Takes on what the store holds of it (a retry's fields may differ from the
    /// stored ones, and only those go on).
    pub fn adopt(&mut self, stored: Message) {
        self.seq = Some(stored.seq);
        self.body = stored.body;
        self.sent_at = stored.sent_at;
        self.client_msg_id = stored.client_msg_id;
        self.conversation_id = stored.conversation_id;
        self.sender_id = stored.sender_id;
        self.origin = stored.origin;
        self.attachments = stored.attachments;
        self.reply_to = stored.reply_to;
        self.mentions = stored.mentions;
        self.kind = stored.kind;
        self.target_id = stored.target_id;
        self.emoji = stored.emoji;
        self.remove = stored.remove;
    }
}

/// The full pipeline, in order.
pub fn full_route() -> Vec<Stage> {
    Stage::ALL.to_vec()
}

/// Events on the stage topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every event is a message: boxing it would cost an allocation each for \
              the few notices' sake"
)]
pub enum StageEvent {
    /// A message following its routing slip.
    Message(MessageEvent),
    /// A member is typing (route stage only).
    Typing {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// The typing session, which does not get its own notice back.
        session_id: SessionId,
    },
    /// A member's read marker moved (route stage only; already stored).
    Read {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// Up to which message.
        seq: i64,
        /// The reading session, which does not get its own notice back.
        session_id: SessionId,
    },
    /// A user came online or went offline (route stage only).
    Presence {
        /// Who.
        user_id: UserId,
        /// Online now?
        online: bool,
    },
}

impl StageEvent {
    /// Its partitioning key: its conversation (for presence, its user), so that the
    /// events of one conversation keep their order.
    pub fn key(&self) -> Vec<u8> {
        match self {
            StageEvent::Message(m) => m.conversation_id.0.as_bytes().to_vec(),
            StageEvent::Typing {
                conversation_id, ..
            }
            | StageEvent::Read {
                conversation_id, ..
            } => conversation_id.0.as_bytes().to_vec(),
            StageEvent::Presence { user_id, .. } => user_id.0.as_bytes().to_vec(),
        }
    }

    /// What the sessions of `recipients` on one node get of this event: the stored
    /// message, or the notice. `None` for a message not stored yet (without `seq`).
    pub fn delivery(&self, recipients: Vec<UserId>) -> Option<Delivery> {
        Some(match *self {
            StageEvent::Message(ref m) => Delivery::Message {
                message: m.to_message()?,
                recipients,
            },
            StageEvent::Typing {
                conversation_id,
                user_id,
                ..
            } => Delivery::Typing {
                conversation_id,
                user_id,
                recipients,
            },
            StageEvent::Read {
                conversation_id,
                user_id,
                seq,
                session_id,
            } => Delivery::Read {
                conversation_id,
                user_id,
                seq,
                recipients,
                except_session: session_id,
            },
            StageEvent::Presence { user_id, online } => Delivery::Presence {
                user_id,
                online,
                recipients,
            },
        })
    }
}

/// Events on a gateway node's delivery topic: one per node, not per recipient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// A stored message for some of this node's users.
    Message {
        /// The message.
        message: Message,
        /// Users on this node to give it to (all their sessions).
        recipients: Vec<UserId>,
    },
    /// A stored message some of this node's users are not given (their incoming
    /// scripts dropped it): their sessions count its `seq` as delivered, so they do
    /// not fetch it from the store to fill the gap it leaves.
    Withheld {
        /// Its conversation.
        conversation_id: ConversationId,
        /// Its `seq`.
        seq: i64,
        /// Users on this node who do not get it.
        recipients: Vec<UserId>,
    },
    /// A typing notice.
    Typing {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// Users to tell.
        recipients: Vec<UserId>,
    },
    /// A read marker moved.
    Read {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// Up to which message.
        seq: i64,
        /// Users to tell (the reader included, for their other sessions).
        recipients: Vec<UserId>,
        /// The session that read, which is not told.
        except_session: SessionId,
    },
    /// A contact came online or went offline.
    Presence {
        /// Who.
        user_id: UserId,
        /// Online now?
        online: bool,
        /// Users to tell.
        recipients: Vec<UserId>,
    },
    /// A message accepted from one session was not stored (an outgoing script
    /// blocked it): that session gets an `error` answering its `send`.
    Rejected {
        /// The sender.
        user_id: UserId,
        /// The session that sent it.
        session_id: SessionId,
        /// The send's idempotency key.
        client_msg_id: String,
        /// Why (`blocked`).
        code: ErrorCode,
        /// For people.
        message: String,
    },
    /// A job of theirs changed status.
    Job {
        /// The job as it is now.
        job: Job,
        /// Users to tell (the owner).
        recipients: Vec<UserId>,
    },
    /// Something the server tells users (a script of theirs was disabled).
    Notice {
        /// What kind of notice.
        kind: String,
        /// For people.
        message: String,
        /// The script concerned, if any.
        script_id: Option<ScriptId>,
        /// Users to tell (all their sessions).
        recipients: Vec<UserId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_and_garbage_are_told_apart() {
        let ok = encode(&StageEvent::Presence {
            user_id: UserId::new(),
            online: true,
        });
        assert!(decode::<StageEvent>(&ok).is_ok());
        let v2 = String::from_utf8(ok)
            .unwrap()
            .replacen("\"v\":1", "\"v\":2", 1);
        assert!(matches!(
            decode::<StageEvent>(v2.as_bytes()),
            Err(DecodeError::Version(2))
        ));
        let future = br#"{"v":9,"event":{"hologram":{}}}"#;
        assert!(matches!(
            decode::<StageEvent>(future),
            Err(DecodeError::Version(9))
        ));
        assert!(matches!(
            decode::<StageEvent>(b"\x00garbage"),
            Err(DecodeError::Malformed(_))
        ));
    }
}

/// Cluster-wide notices on the control topic, read by every node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// A conversation's members changed: drop cached membership.
    MembersChanged {
        /// Which conversation.
        conversation_id: ConversationId,
    },
    /// A user's scripts or auto-reply changed: reload them.
    AutomationChanged {
        /// Whose.
        user_id: UserId,
    },
}

/// A submitted job, on the requests topic (key: the job id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The job.
    pub job_id: JobId,
    /// Who submitted it.
    pub owner_id: UserId,
    /// Its code.
    pub source: JobSource,
    /// The first argument of `main`.
    pub input: serde_json::Value,
    /// Encrypted credentials (`base64(nonce || ciphertext || tag)`), decrypted only by
    /// the worker that runs the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// CPU budget, milliseconds.
    pub cpu_ms: u64,
    /// Memory limit, bytes.
    pub memory_bytes: u64,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
}

/// How a job ended, on the results topic (key: the job id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The job.
    pub job_id: JobId,
    /// Who submitted it.
    pub owner_id: UserId,
    /// `succeeded`, `failed` or `timed_out`.
    pub status: JobStatus,
    /// What `main` returned.
    pub output: serde_json::Value,
    /// Why it did not succeed.
    pub error: Option<JobError>,
    /// Time the run took, milliseconds.
    pub elapsed_ms: u64,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When the worker took it.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// The worker that ran it (`<node>/<index>`).
    pub worker: String,
    /// Whether the job still existed when the worker took it (a deleted job is not run,
    /// but its outcome is still published so the observer sees it leave the queue).
    pub ran: bool,
}

/// What the observer measured and decided, on the decisions topic, once per tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ObserverReport {
    /// When.
    pub at: DateTime<Utc>,
    /// Jobs submitted per second over the stable window.
    pub arrival_rate: f64,
    /// Jobs finished per second over the stable window.
    pub service_rate: f64,
    /// Mean time from submission to result over the stable window, milliseconds.
    pub mean_response_ms: f64,
    /// 95th percentile of the same, milliseconds.
    pub p95_response_ms: f64,
    /// Jobs submitted and not finished.
    pub queue_depth: u64,
    /// Workers running now (in the local pool, or seen recently on the results topic).
    pub workers: u32,
    /// Workers wanted.
    pub desired_workers: u32,
    /// Whether the panic window is in force.
    pub panic: bool,
    /// `add`, `remove` or `hold`.
    pub action: String,
    /// Why, for people.
    pub reason: String,
}
