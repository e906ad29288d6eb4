//! Typed identifiers. Every id on the wire is a UUID string; the types keep a
//! user id from being passed where a conversation id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// A direct or group conversation.
    ConversationId
);
uuid_id!(
    /// A file a user uploaded, which messages carry by reference.
    AttachmentId
);
uuid_id!(
    /// One WebSocket session of a user on a gateway.
    SessionId
);
uuid_id!(
    /// A user's script.
    ScriptId
);
uuid_id!(
    /// A job: one run of a function submitted through the jobs API.
    JobId
);

/// A message. Unlike other ids it is derived, not random: see [`MessageId::derive`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

/// Namespace of derived message ids (a fixed, random UUID).
const MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_3b0e_8e0d_4f5e_9a57_2d3c_c0de_c0de);

impl MessageId {
    /// The id of the message `sender` sends to `conversation` with idempotency key
    /// `client_msg_id`.
    ///
    /// Deriving it (UUID v5 over all three) means a retried send gets the same id on
    /// any gateway, before or after the first attempt was stored, with no coordination;
    /// the same key used in another conversation is another message.
    pub fn derive(sender: UserId, conversation: ConversationId, client_msg_id: &str) -> Self {
        let mut name = Vec::with_capacity(32 + client_msg_id.len());
        name.extend_from_slice(sender.0.as_bytes());
        name.extend_from_slice(conversation.0.as_bytes());
        name.extend_from_slice(client_msg_id.as_bytes());
        Self(Uuid::new_v5(&MESSAGE_NAMESPACE, &name))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// The name of a node (a process running one or more roles). Names its delivery topic.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    /// Whether `s` is usable as a node id: 1 to 64 of `[A-Za-z0-9._-]`, so that it
    /// is also a valid Kafka topic name suffix.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_per_sender_conversation_and_key() {
        let (alice, bob) = (UserId::new(), UserId::new());
        let (c1, c2) = (ConversationId::new(), ConversationId::new());
        let id = MessageId::derive(alice, c1, "k1");
        assert_eq!(id, MessageId::derive(alice, c1, "k1"));
        assert_ne!(id, MessageId::derive(alice, c1, "k2"));
        assert_ne!(id, MessageId::derive(bob, c1, "k1"));
        assert_ne!(id, MessageId::derive(alice, c2, "k1"));
    }

    #[test]
    fn node_ids_must_be_topic_safe() {
        assert!(NodeId::is_valid("gw-1.eu_west"));
        assert!(!NodeId::is_valid(""));
        assert!(!NodeId::is_valid("a/b"));
        assert!(!NodeId::is_valid(&"x".repeat(65)));
    }

    #[test]
    fn ids_round_trip_through_strings() {
        let id = ConversationId::new();
        assert_eq!(id.to_string().parse::<ConversationId>().unwrap(), id);
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }
}
