//! The public shapes of users, conversations and messages, as clients see them.

use crate::{AttachmentId, ConversationId, MessageId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A user as others see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// The unique, case-sensitive login name.
    pub username: String,
}

/// Direct (two people, fixed) or group (titled, owned, open membership).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Exactly two members, never changed; one per pair of users.
    Direct,
    /// A titled conversation with an owner who manages its members.
    Group,
}

impl ConversationKind {
    /// The kind's name in storage and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Group => "group",
        }
    }

    /// Parses a stored kind name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(Self::Direct),
            "group" => Some(Self::Group),
            _ => None,
        }
    }
}

/// A conversation as one of its members sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// The conversation's id.
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// The group's title; `None` for direct conversations.
    pub title: Option<String>,
    /// Member ids, in the order they joined.
    pub members: Vec<UserId>,
    /// The group's owner; `None` for direct conversations.
    pub owner_id: Option<UserId>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The sequence number of its latest stored message (0 when empty).
    pub last_seq: i64,
    /// The viewer's read marker: the `seq` they have read up to.
    pub read_seq: i64,
    /// Messages after the viewer's read marker (changes to messages are not counted,
    /// nor deleted messages).
    pub unread: i64,
    /// Messages after the viewer's read marker that mention the viewer.
    pub mentions_unread: i64,
}

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Typed by a person.
    User,
    /// Sent by one of the sender's scripts.
    Script,
    /// An automatic reply.
    AutoReply,
}

impl Origin {
    /// The origin's name in storage and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Script => "script",
            Self::AutoReply => "auto_reply",
        }
    }

    /// Parses a stored origin name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "script" => Some(Self::Script),
            "auto_reply" => Some(Self::AutoReply),
            _ => None,
        }
    }
}

/// What an entry of a conversation's stream is: a message, or a change to one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A message (every v1 message).
    #[default]
    Text,
    /// A new body for the message `target_id`.
    Edit,
    /// The message `target_id` taken back.
    Delete,
    /// A reaction to the message `target_id` (or, with `remove`, taken back).
    Reaction,
}

impl MessageKind {
    /// The kind's name in storage and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Edit => "edit",
            Self::Delete => "delete",
            Self::Reaction => "reaction",
        }
    }

    /// Parses a stored kind name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "edit" => Some(Self::Edit),
            "delete" => Some(Self::Delete),
            "reaction" => Some(Self::Reaction),
            _ => None,
        }
    }

    /// Whether this is a message rather than a change to one.
    pub fn is_text(&self) -> bool {
        *self == Self::Text
    }

    /// Whether entries of this kind have a body (a message, an edit).
    pub fn has_body(self) -> bool {
        matches!(self, Self::Text | Self::Edit)
    }
}

/// A stored entry of a conversation: a message, or a change to one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Derived from the sender, conversation and `client_msg_id`; see [`MessageId::derive`].
    pub message_id: MessageId,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// The conversation it belongs to.
    pub conversation_id: ConversationId,
    /// Its position in the conversation: 1, 2, 3, … with no gaps.
    pub seq: i64,
    /// Who sent it.
    pub sender_id: UserId,
    /// The text.
    pub body: String,
    /// When the gateway accepted it.
    pub sent_at: DateTime<Utc>,
    /// Person, script or auto-reply.
    pub origin: Origin,
    /// Files it carries, in the order sent (references: the bytes are in the object
    /// store).
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// The earlier message of the conversation it answers.
    #[serde(default)]
    pub reply_to: Option<MessageId>,
    /// Members named as `@username` in the body, each once, in order of first
    /// appearance.
    #[serde(default)]
    pub mentions: Vec<UserId>,
    /// A message, or which change to the message `target_id`.
    #[serde(default)]
    pub kind: MessageKind,
    /// For a change: the message it changes.
    #[serde(default)]
    pub target_id: Option<MessageId>,
    /// For a reaction: the emoji.
    #[serde(default)]
    pub emoji: Option<String>,
    /// For a reaction: `true` when it takes the sender's reaction back.
    #[serde(default)]
    pub remove: bool,
    /// For a message: deleted since (its body and attachments are then empty).
    #[serde(default)]
    pub deleted: bool,
    /// For a message: when it was last edited.
    #[serde(default)]
    pub edited_at: Option<DateTime<Utc>>,
}

/// A file a user uploaded, as messages carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Its id.
    pub attachment_id: AttachmentId,
    /// The file's name, as the uploader gave it.
    pub name: String,
    /// The media type the uploader gave (`application/octet-stream` if none).
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// Which of a user's messages a script acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Messages the owner receives (`onIncoming`).
    Incoming,
    /// Messages the owner sends (`onOutgoing`).
    Outgoing,
}

impl Hook {
    /// The hook's name in storage and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incoming => "incoming",
            Self::Outgoing => "outgoing",
        }
    }

    /// The function a script exports for this hook.
    pub fn function(self) -> &'static str {
        match self {
            Self::Incoming => "onIncoming",
            Self::Outgoing => "onOutgoing",
        }
    }

    /// Parses a stored hook name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "incoming" => Some(Self::Incoming),
            "outgoing" => Some(Self::Outgoing),
            _ => None,
        }
    }
}

/// The last failure of a script.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptError {
    /// `thrown`, `timeout`, `out_of_memory`, `output`, `bad_action`, …
    pub code: String,
    /// For people.
    pub message: String,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// A user's script with its run counts, as its owner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// Its id.
    pub id: crate::ScriptId,
    /// Its owner.
    pub owner_id: UserId,
    /// A name for people.
    pub name: String,
    /// The ES module's source.
    pub source: String,
    /// The hooks it runs on.
    pub hooks: Vec<Hook>,
    /// Whether it runs.
    pub enabled: bool,
    /// Outgoing only: a failing run blocks the message instead of letting it through.
    pub fail_closed: bool,
    /// Memory limit per instance, bytes.
    pub memory_bytes: u64,
    /// CPU budget per call, milliseconds.
    pub cpu_ms: u64,
    /// Bumped by every change; instances of older versions are not reused.
    pub version: i64,
    /// Runs so far.
    pub runs: i64,
    /// Failed runs so far.
    pub failures: i64,
    /// Failed runs in a row (reset by a good run).
    pub consecutive_failures: i64,
    /// The last failure.
    pub last_error: Option<ScriptError>,
    /// What the last run logged.
    pub last_logs: Vec<String>,
    /// Why the server disabled it, if it did.
    pub disabled_reason: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Script {
    /// Whether it runs on `hook`.
    pub fn runs_on(&self, hook: Hook) -> bool {
        self.enabled && self.hooks.contains(&hook)
    }
}

/// A user's automatic reply, like an e-mail vacation responder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoReply {
    /// Whether it answers.
    pub enabled: bool,
    /// What it answers.
    pub text: String,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Submitted, waiting for a worker.
    Queued,
    /// A worker took it.
    Running,
    /// `main` returned; the result has its output.
    Succeeded,
    /// `main` threw, the source could not be loaded, or a limit other than time was hit.
    Failed,
    /// The CPU budget ran out.
    TimedOut,
}

impl JobStatus {
    /// The status's name in storage and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    /// Parses a stored status name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::TimedOut,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    /// Whether the job has ended (and has a result).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::TimedOut)
    }
}

/// A git repository holding a job's code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    /// Where to fetch it from (`https://…`, or other allowed schemes).
    pub url: String,
    /// A branch, tag or commit id.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The ES module, relative to the repository's root.
    pub path: String,
}

/// A job's code: inline, or a file in a git repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobSource {
    /// The ES module's source text.
    Script(String),
    /// A module in a git repository at a ref.
    Git(GitSource),
}

/// A job as its owner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: crate::JobId,
    /// Where it is in its life.
    pub status: JobStatus,
    /// Its code.
    pub source: JobSource,
    /// CPU budget, milliseconds.
    pub cpu_ms: u64,
    /// Memory limit, bytes.
    pub memory_bytes: u64,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
    /// When a worker took it (the latest worker, should one have died).
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Why a job failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// `thrown`, `timeout`, `out_of_memory`, `compile`, `missing`, `output`, `git`,
    /// `credentials`, …
    pub code: String,
    /// For people.
    pub message: String,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// `succeeded`, `failed` or `timed_out`.
    pub status: JobStatus,
    /// What `main` returned (`null` unless it succeeded).
    pub output: serde_json::Value,
    /// Why it did not succeed.
    pub error: Option<JobError>,
    /// Time the run took on its worker, milliseconds.
    pub elapsed_ms: u64,
    /// Time from submission until a worker took it, milliseconds.
    pub queued_ms: u64,
}
