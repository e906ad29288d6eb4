//! Durable state: users, conversations, members, messages, and (see
//! [`AutomationStore`]) users' scripts and auto-replies, (see [`JobStore`]) jobs, and
//! (see [`InviteStore`]) invites, and (see [`AttachmentStore`]) what is known of
//! uploaded files.
//!
//! The store stage is the only writer of messages; the gateway writes accounts,
//! conversations, members and read markers. [`Store`] is the contract, with one
//! implementation per database:
//!
//! - [`sqlite`]: a file in the data directory, the embedded default (`sqlite://`).
//! - [`postgres`]: PostgreSQL, shared by the nodes of a cluster (`postgres://`).
//!
//! [`Directory`] wraps a store with a membership cache, so that the hot path (may this
//! user send here? who receives this?) does not query the database per message.
//!
//! # Contract
//!
//! - [`Store::append_messages`] gives each new message the conversation's next `seq`
//!   (1, 2, 3, … with no gaps) and stores it in the same transaction. A message whose
//!   `message_id` is already stored is not stored again: the stored copy is returned.
//!   The whole batch is one transaction.
//! - A change (an edit, delete or reaction: `kind` other than `text`) is an entry of
//!   its own, numbered like a message, and in the same transaction changes what it
//!   targets: an edit sets the message's `edited_at`, its searchable text (SQLite's
//!   search index follows on its own, see `search_index.rs`) and whom it mentions; a
//!   delete erases the body and attachments of the message and of its edits; a reaction adds to or takes from the message's reactions. A change whose
//!   message is not a stored message of the conversation, or is deleted, is not stored
//!   ([`Appended::TargetGone`]), nor is a reaction already there, or not there to take
//!   back ([`Appended::Unchanged`]).
//! - Read markers only move forward and never past the conversation's `last_seq`.

mod append;
mod attachments;
mod automation;
mod backend;
mod directory;
mod invites;
mod jobs;
pub mod postgres;
mod search_index;
pub mod sqlite;

pub use attachments::{AttachmentStore, StoredAttachment};
pub use automation::{AutomationStore, Automations, ScriptRuns, UserAutomation};
pub use directory::{Directory, Members};
pub use invites::InviteStore;
pub use jobs::{FinishedJob, JobStore, StoredJob};

use async_trait::async_trait;
use chorus_core::model::{
    Attachment, Conversation, ConversationKind, Message, MessageKind, Origin, User,
};
use chorus_core::{ConversationId, MessageId, UserId};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value is taken (a username).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The thing to change does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The database failed or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be read back (a corrupt row).
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database could not be reached (as opposed to a bug or bad data):
    /// worth retrying, and a reason to report the node not ready.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            Self::Database(sqlx::Error::Database(e)) => e
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|e| postgres::unavailable_code(e.code())),
            _ => false,
        }
    }
}

/// Result of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A user with the stored password hash, for login.
#[derive(Clone, Debug)]
pub struct Account {
    /// The user.
    pub user: User,
    /// PHC-format argon2id hash.
    pub password_hash: String,
}

/// A conversation as stored, independent of the viewer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationRecord {
    /// Its id.
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Group title.
    pub title: Option<String>,
    /// Group owner.
    pub owner_id: Option<UserId>,
    /// Members in the order they joined.
    pub members: Vec<UserId>,
    /// Latest `seq`.
    pub last_seq: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl ConversationRecord {
    /// The conversation as `viewer` sees it, given their read marker and what is
    /// after it.
    pub fn view(self, read_seq: i64, after: AfterMarker) -> Conversation {
        Conversation {
            unread: (self.last_seq - read_seq - after.not_messages).max(0),
            read_seq,
            mentions_unread: after.mentions,
            id: self.id,
            kind: self.kind,
            title: self.title,
            members: self.members,
            owner_id: self.owner_id,
            created_at: self.created_at,
            last_seq: self.last_seq,
        }
    }
}

/// What is after a member's read marker in a conversation, besides its count of
/// entries (`last_seq - read_seq`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AfterMarker {
    /// Entries that are not unread messages: changes, and deleted messages.
    pub not_messages: i64,
    /// Messages that mention the member (as their latest edit names them).
    pub mentions: i64,
}

/// A search of messages' current bodies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    /// The words, each matched as a prefix of a word (case and accents aside); at least
    /// one.
    pub words: Vec<String>,
    /// Only in this conversation.
    pub conversation: Option<ConversationId>,
    /// At most this many.
    pub limit: i64,
}

/// The words of a search text: its runs of letters and digits.
pub fn search_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A conversation's tag in the search index: the last 8 hex digits of its id (random
/// bits of a UUID v7) spelled with the letters `a` to `p`, so that no parser reads a
/// number in it (PostgreSQL's reads `5e39…` as a float and cuts the word there). Two
/// conversations may share a tag: a search then reads the other's postings too, and its
/// SQL keeps only the caller's conversations.
fn conversation_tag(id: ConversationId) -> String {
    id.0.as_bytes()[12..]
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .map(|nibble| char::from(b'a' + nibble))
        .collect()
}

/// What the search index is given of a message of `conversation`: each word of `body`
/// (as [`search_words`] cuts it) with the conversation's tag in front, `<tag><word>`,
/// which both databases read as one word (and fold: case, accents). A search for `word`
/// in the conversation is then the prefix `<tag>word*`, whose postings are that
/// conversation's alone: however common a word is elsewhere, a search reads only the
/// caller's conversations. The tag has a fixed length, so nothing else can be read as
/// the same tag and word.
fn search_text(conversation: ConversationId, body: &str) -> String {
    let tag = conversation_tag(conversation);
    search_words(body)
        .iter()
        .map(|w| format!("{tag}{w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Most conversations one full-text query names; a caller in more is searched a slice
/// at a time.
const SEARCHED_CONVERSATIONS: usize = 500;

/// A message to store (no `seq` yet).
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Derived id: the idempotency key.
    pub message_id: MessageId,
    /// The client's key.
    pub client_msg_id: String,
    /// Where.
    pub conversation_id: ConversationId,
    /// Who.
    pub sender_id: UserId,
    /// The text.
    pub body: String,
    /// Accepted at.
    pub sent_at: DateTime<Utc>,
    /// Person, script or auto-reply.
    pub origin: Origin,
    /// Files it carries (ready uploads of the sender's, checked by the gateway).
    pub attachments: Vec<Attachment>,
    /// The message it answers (one of its conversation's, checked by the gateway).
    pub reply_to: Option<MessageId>,
    /// Members it mentions.
    pub mentions: Vec<UserId>,
    /// A message, or which change.
    pub kind: MessageKind,
    /// For a change: the message it changes.
    pub target_id: Option<MessageId>,
    /// For a reaction: the emoji.
    pub emoji: Option<String>,
    /// For a reaction: whether it is taken back.
    pub remove: bool,
}

impl NewMessage {
    /// A message a person sends, with nothing attached, answered or mentioned; its id
    /// derived from sender, conversation and key.
    pub fn text(
        sender: UserId,
        conversation: ConversationId,
        client_msg_id: &str,
        body: &str,
        sent_at: DateTime<Utc>,
    ) -> Self {
        Self {
            message_id: MessageId::derive(sender, conversation, client_msg_id),
            client_msg_id: client_msg_id.to_owned(),
            conversation_id: conversation,
            sender_id: sender,
            body: body.to_owned(),
            sent_at,
            origin: Origin::User,
            attachments: Vec::new(),
            reply_to: None,
            mentions: Vec::new(),
            kind: MessageKind::Text,
            target_id: None,
            emoji: None,
            remove: false,
        }
    }
}

/// What [`Store::append_messages`] did with one message.
#[derive(Clone, Debug)]
pub enum Appended {
    /// Stored now, with this `seq`.
    New(Message),
    /// Stored earlier (a retry or a redelivery); the stored copy.
    Existing(Message),
    /// The conversation does not exist; nothing stored.
    NoConversation,
    /// A reaction there already, or not there to take back; nothing stored.
    Unchanged,
    /// A change whose message is not a stored, undeleted message of its conversation
    /// (deleted since the change was accepted); nothing stored.
    TargetGone,
}

impl Appended {
    /// The message, if this batch stored it.
    pub fn as_new(&self) -> Option<&Message> {
        match self {
            Self::New(m) => Some(m),
            _ => None,
        }
    }
}

/// Which page of history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Only messages with a greater `seq`.
    pub after_seq: Option<i64>,
    /// Only messages with a smaller `seq`.
    pub before_seq: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// The largest group whose members see each other's presence. Presence to every
/// member of a big group costs members² frames each time they all reconnect (a node
/// restart): a group of 1000 sent a million frames, which held the group's messages
/// up for seconds.
pub const PRESENCE_MAX_GROUP: i64 = 100;

/// Durable state; see the crate docs for the contract.
#[async_trait]
pub trait Store:
    AttachmentStore + AutomationStore + JobStore + InviteStore + Send + Sync + 'static
{
    /// Whether the database answers.
    async fn health(&self) -> Result<()>;

    /// Creates an account; `Conflict` when the username is taken.
    async fn create_user(&self, username: &str, password_hash: &str) -> Result<User>;
    /// The account named `username`.
    async fn account(&self, username: &str) -> Result<Option<Account>>;
    /// A user by id.
    async fn user(&self, id: UserId) -> Result<Option<User>>;
    /// Users whose name starts with `prefix`, by name.
    async fn search_users(&self, prefix: &str, limit: i64) -> Result<Vec<User>>;
    /// The user linked to an outside identity (an OIDC issuer and subject), if any.
    async fn external_user(&self, issuer: &str, subject: &str) -> Result<Option<User>>;
    /// Creates a user without a password, named `username`, and links the identity to
    /// it, in one transaction. `Conflict("username")` when the name is taken (nothing is
    /// created); `Conflict("identity")` when the identity is linked already (another
    /// gateway linked it first: read it with [`Store::external_user`]).
    async fn create_external_user(
        &self,
        issuer: &str,
        subject: &str,
        username: &str,
    ) -> Result<User>;

    /// Creates a group owned by `owner` with `owner` and `members`.
    async fn create_group(
        &self,
        owner: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationRecord>;
    /// How many groups `user` owns.
    async fn groups_owned(&self, user: UserId) -> Result<i64>;
    /// The direct conversation of `a` and `b`, created if missing (then `true`).
    async fn direct(&self, a: UserId, b: UserId) -> Result<(ConversationRecord, bool)>;
    /// A conversation by id.
    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationRecord>>;
    /// Every conversation of `user` with the user's read marker.
    async fn conversations_of(&self, user: UserId) -> Result<Vec<(ConversationRecord, i64)>>;
    /// The read marker of `user` in `conversation` (`None`: not a member).
    async fn read_seq(&self, conversation: ConversationId, user: UserId) -> Result<Option<i64>>;
    /// Adds a member (no-op if present).
    async fn add_member(&self, conversation: ConversationId, user: UserId) -> Result<()>;
    /// Removes a member; a departing owner hands the group to the longest-standing member.
    async fn remove_member(&self, conversation: ConversationId, user: UserId) -> Result<()>;
    /// Member ids in joining order.
    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>>;
    /// Users who see `user`'s presence: those sharing a group of at most
    /// [`PRESENCE_MAX_GROUP`] members with `user` or, `through_direct`, a direct
    /// conversation (not `user`).
    async fn contacts(&self, user: UserId, through_direct: bool) -> Result<Vec<UserId>>;

    /// Stores messages, one transaction; see the crate docs.
    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>>;
    /// A message by id.
    async fn message(&self, id: MessageId) -> Result<Option<Message>>;
    /// A page of history, ascending by `seq`: the first `limit` after `after_seq`, or
    /// without `after_seq` the last `limit` before `before_seq`.
    async fn messages(&self, conversation: ConversationId, page: Page) -> Result<Vec<Message>>;
    /// A page of the messages answering `message`, as [`Store::messages`] pages.
    async fn replies(
        &self,
        conversation: ConversationId,
        message: MessageId,
        page: Page,
    ) -> Result<Vec<Message>>;
    /// Moves the read marker forward (capped at `last_seq`); returns the marker now.
    async fn mark_read(&self, conversation: ConversationId, user: UserId, seq: i64) -> Result<i64>;
    /// `last_seq` of every conversation of `user`.
    async fn last_seqs(&self, user: UserId) -> Result<Vec<(ConversationId, i64)>>;
    /// The users with these exact names (those that exist).
    async fn users_named(&self, names: &[&str]) -> Result<Vec<User>>;
    /// Per conversation of `user` with any: what is after `user`'s read marker.
    async fn after_marker(&self, user: UserId) -> Result<HashMap<ConversationId, AfterMarker>>;
    /// Whether `user` has reacted to `target` with `emoji` (and not taken it back).
    async fn reacted(&self, target: MessageId, user: UserId, emoji: &str) -> Result<bool>;
    /// The messages of `user`'s conversations whose current body matches, newest
    /// first, with their current body (after edits); deleted ones never match.
    async fn search(&self, user: UserId, query: &SearchQuery) -> Result<Vec<Message>>;
}

/// Measures one database call into `chorus_db_query_seconds{op}` when dropped (so an
/// early return or an error is measured too).
pub(crate) struct QueryTimer {
    op: &'static str,
    started: std::time::Instant,
}

impl QueryTimer {
    pub(crate) fn start(op: &'static str) -> Self {
        Self {
            op,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        metrics::histogram!("chorus_db_query_seconds", "op" => self.op)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// A message's mentions as stored in its row: `None` for nobody, else a JSON array.
fn mentions_to_column(mentions: &[UserId]) -> Option<String> {
    (!mentions.is_empty()).then(|| serde_json::to_string(mentions).expect("ids always serialize"))
}

/// Reads the column written by [`mentions_to_column`].
fn mentions_from_column(column: Option<&str>) -> Result<Vec<UserId>> {
    column.map_or(Ok(Vec::new()), |json| {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("mentions: {e}")))
    })
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| StoreError::Corrupt(format!("time {ms}")))
}

fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("id {s:?}")))
}

/// The key that makes one direct conversation per pair of users.
fn direct_key(a: UserId, b: UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("{lo}:{hi}")
}
