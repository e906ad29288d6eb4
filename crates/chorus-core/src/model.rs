//! The public shapes of users, conversations and messages, as clients see them.

use crate::{ConversationId, MessageId, UserId};
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
    /// Messages after the viewer's read marker.
    pub unread: i64,
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

/// A stored message.
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
}
