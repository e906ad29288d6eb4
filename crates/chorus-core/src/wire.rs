//! WebSocket frames: one JSON object per text frame, tagged by `type`.

use crate::model::{Message, User};
use crate::{AttachmentId, ConversationId, ErrorCode, MessageId, SessionId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A frame from a client.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Submit a message.
    Send {
        /// The client's idempotency key for this message.
        client_msg_id: String,
        /// Where it goes.
        conversation_id: ConversationId,
        /// The text; may be empty when the message carries attachments.
        body: String,
        /// Uploads of the sender's to carry, in order.
        #[serde(default)]
        attachments: Vec<AttachmentId>,
        /// The earlier message of the conversation it answers.
        #[serde(default)]
        reply_to: Option<MessageId>,
    },
    /// Give a message of one's own a new body.
    Edit {
        /// The client's idempotency key for this change.
        client_msg_id: String,
        /// The message's conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// The new body.
        body: String,
    },
    /// Take a message back (one's own, or any in a group one owns).
    Delete {
        /// The client's idempotency key for this change.
        client_msg_id: String,
        /// The message's conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
    },
    /// React to a message, or take one's reaction back.
    React {
        /// The client's idempotency key for this change.
        client_msg_id: String,
        /// The message's conversation.
        conversation_id: ConversationId,
        /// The message.
        message_id: MessageId,
        /// The emoji: 1 to 64 bytes, no whitespace.
        emoji: String,
        /// Take the reaction back.
        #[serde(default)]
        remove: bool,
    },
    /// Replay what was missed, then learn every conversation's last `seq`.
    Sync {
        /// The last `seq` the client has seen, per conversation.
        #[serde(default)]
        since: HashMap<ConversationId, i64>,
    },
    /// The user is typing.
    Typing {
        /// Where.
        conversation_id: ConversationId,
    },
    /// The user has read up to `seq`.
    Read {
        /// Where.
        conversation_id: ConversationId,
        /// Up to which message.
        seq: i64,
    },
    /// Liveness check, answered by `pong`.
    Ping {
        /// Echoed back in the `pong`.
        #[serde(default)]
        nonce: Option<serde_json::Value>,
    },
}

/// The `type`s a client may send.
pub const CLIENT_FRAME_TYPES: [&str; 8] = [
    "send", "edit", "delete", "react", "sync", "typing", "read", "ping",
];

/// Why a text frame is not a [`ClientFrame`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// `bad_request` or `unknown_type`.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

impl ClientFrame {
    /// Parses a text frame, telling an unknown `type` from a malformed frame.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        serde_json::from_str(text).map_err(|err| Self::classify(text, err))
    }

    fn classify(text: &str, err: serde_json::Error) -> FrameError {
        #[derive(Deserialize)]
        struct Typed {
            #[serde(rename = "type")]
            ty: Option<serde_json::Value>,
        }
        let bad = |message: String| FrameError {
            code: ErrorCode::BadRequest,
            message,
        };
        match serde_json::from_str::<Typed>(text) {
            Err(_) => bad(format!("frame is not a JSON object: {err}")),
            Ok(Typed { ty: None }) => bad("frame has no `type`".into()),
            Ok(Typed {
                ty: Some(serde_json::Value::String(ty)),
            }) if !CLIENT_FRAME_TYPES.contains(&ty.as_str()) => FrameError {
                code: ErrorCode::UnknownType,
                message: format!("unknown frame type `{ty}`"),
            },
            Ok(Typed {
                ty: Some(serde_json::Value::String(ty)),
            }) => bad(format!("invalid `{ty}` frame: {err}")),
            Ok(Typed { ty: Some(_) }) => bad("`type` must be a string".into()),
        }
    }
}

/// A frame to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The first frame of every session.
    Ready {
        /// This session's id.
        session_id: SessionId,
        /// Who is signed in.
        user: User,
    },
    /// A `send` (or `edit`, `delete`, `react`) is on the log (not yet stored: the
    /// `message` frame says that).
    Accepted {
        /// The client's idempotency key.
        client_msg_id: String,
        /// The new entry's id.
        message_id: MessageId,
        /// The change changes nothing (a repeated reaction, a deleted message deleted
        /// again): nothing is stored under `message_id` and no `message` frame follows.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unchanged: bool,
    },
    /// A stored message.
    Message {
        /// The message, with its `seq`.
        message: Message,
    },
    /// The end of a `sync`.
    Synced {
        /// The last `seq` of every conversation of the user.
        last_seq: HashMap<ConversationId, i64>,
        /// Users sharing a conversation with this user who are online now.
        online: Vec<UserId>,
    },
    /// A contact came online or went offline.
    Presence {
        /// Who.
        user_id: UserId,
        /// Online now?
        online: bool,
    },
    /// Someone is typing.
    Typing {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
    },
    /// Someone read up to `seq`.
    Read {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// Up to which message.
        seq: i64,
    },
    /// Something the server tells the user, outside any conversation.
    Notice {
        /// What kind: `script_disabled`.
        kind: String,
        /// For people.
        message: String,
        /// The script concerned, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        script_id: Option<crate::ScriptId>,
    },
    /// A job of the user changed status.
    Job {
        /// The job as it is now.
        job: crate::model::Job,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's nonce.
        nonce: Option<serde_json::Value>,
    },
    /// Something went wrong; the connection stays open.
    Error {
        /// Stable machine code.
        code: ErrorCode,
        /// For people.
        message: String,
        /// The `send` this answers, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// With `rate_limited`: when to try again.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
            client_msg_id: None,
            retry_after_ms: None,
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame() {
        let c = ConversationId::new();
        let f = ClientFrame::parse(&format!(
            r#"{{"type":"send","client_msg_id":"a","conversation_id":"{c}","body":"hi"}}"#
        ))
        .unwrap();
        assert!(matches!(f, ClientFrame::Send { ref body, .. } if body == "hi"));
        let f = ClientFrame::parse(&format!(r#"{{"type":"sync","since":{{"{c}":3}}}}"#)).unwrap();
        assert_eq!(
            f,
            ClientFrame::Sync {
                since: HashMap::from([(c, 3)])
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"sync"}"#).unwrap(),
            ClientFrame::Sync {
                since: HashMap::new()
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","nonce":7}"#).unwrap(),
            ClientFrame::Ping {
                nonce: Some(serde_json::json!(7))
            }
        );
    }

    #[test]
    fn classifies_bad_frames() {
        let code = |t: &str| ClientFrame::parse(t).unwrap_err().code;
        assert_eq!(code("{not json"), ErrorCode::BadRequest);
        assert_eq!(code("[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"body":"x"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"send","body":"x"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"read","conversation_id":"nope","seq":1}"#),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn error_frames_omit_absent_fields() {
        let json = ServerFrame::error(ErrorCode::TooLarge, "big").to_json();
        assert_eq!(
            json,
            r#"{"type":"error","code":"too_large","message":"big"}"#
        );
    }
}
