//! The one path every message takes into the pipeline, from WebSocket or HTTP.

use crate::attachments::MAX_PER_MESSAGE;
use crate::error::ApiError;
use crate::state::AppState;
use chorus_core::body::{BodyError, check_message_body};
use chorus_core::event::{StageEvent, encode};
use chorus_core::model::{Attachment, Message, MessageKind, Origin};
use chorus_core::wire::ServerFrame;
use chorus_core::{AttachmentId, ConversationId, ErrorCode, MessageId, SessionId, UserId};
use chorus_log::Outgoing;
use chorus_store::Members;
use std::sync::Arc;

/// Longest `client_msg_id`, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 128;

/// Checks that `user` may act in `conversation`: `not_found` when it does not exist,
/// `forbidden` when the user is not a member.
pub async fn require_member(
    state: &AppState,
    conversation: ConversationId,
    user: UserId,
) -> Result<Arc<Members>, ApiError> {
    let members = state.directory.members(conversation).await?;
    if members.contains(user) {
        return Ok(members);
    }
    if members.is_empty()
        && state
            .directory
            .store()
            .conversation(conversation)
            .await?
            .is_none()
    {
        return Err(ApiError::not_found(format!(
            "conversation {conversation} does not exist"
        )));
    }
    Err(ApiError::forbidden(format!(
        "you are not a member of conversation {conversation}"
    )))
}

/// A message a user sends, as the client gave it.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Who sends.
    pub sender: UserId,
    /// From which WebSocket session (none over HTTP).
    pub session: Option<SessionId>,
    /// Where to.
    pub conversation: ConversationId,
    /// The client's idempotency key.
    pub client_msg_id: String,
    /// The text; may be empty when the message carries attachments.
    pub body: String,
    /// Uploads of the sender's to carry, in order.
    pub attachments: Vec<AttachmentId>,
    /// The earlier message of the conversation it answers.
    pub reply_to: Option<MessageId>,
    /// `None` for a message; else the change it makes to one.
    pub change: Option<Change>,
}

impl Submission {
    /// A change to a message: no attachments, no `reply_to`, and a body only for an
    /// edit (`""` otherwise).
    pub fn change(
        sender: UserId,
        session: Option<SessionId>,
        conversation: ConversationId,
        client_msg_id: String,
        body: String,
        change: Change,
    ) -> Self {
        Self {
            sender,
            session,
            conversation,
            client_msg_id,
            body,
            attachments: Vec::new(),
            reply_to: None,
            change: Some(change),
        }
    }
}

/// A change to a message of the conversation.
#[derive(Clone, Debug)]
pub enum Change {
    /// A new body (the submission's), by the message's sender.
    Edit(MessageId),
    /// Taking it back, by its sender or the group's owner.
    Delete(MessageId),
    /// A reaction of any member, or (`remove`) taking it back.
    React {
        /// The message.
        target: MessageId,
        /// 1 to [`MAX_EMOJI`] bytes, no whitespace.
        emoji: String,
        /// Take it back.
        remove: bool,
    },
}

impl Change {
    fn target(&self) -> MessageId {
        match self {
            Self::Edit(t) | Self::Delete(t) | Self::React { target: t, .. } => *t,
        }
    }
}

/// Longest reaction emoji, in bytes.
pub const MAX_EMOJI: usize = 64;

/// A submission the log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The new entry's id.
    pub message_id: MessageId,
    /// A change that changes nothing: nothing is stored under `message_id`.
    pub unchanged: bool,
}

impl Accepted {
    /// The answer to the `send` (or change) whose key is `client_msg_id`.
    pub fn frame(self, client_msg_id: String) -> ServerFrame {
        ServerFrame::Accepted {
            client_msg_id,
            message_id: self.message_id,
            unchanged: self.unchanged,
        }
    }

    /// The body of an HTTP 202.
    pub fn json(self) -> serde_json::Value {
        if self.unchanged {
            serde_json::json!({ "message_id": self.message_id, "unchanged": true })
        } else {
            serde_json::json!({ "message_id": self.message_id })
        }
    }
}

/// Validates a message and puts it on the log; returns its id once the log holds it.
pub async fn submit(state: &AppState, message: Submission) -> Result<Accepted, ApiError> {
    submit_pipelined(state, message).await?.await
}

/// A send in flight on the log; resolves once the log holds it.
pub type PendingSend = futures::future::BoxFuture<'static, Result<Accepted, ApiError>>;

/// Validates a message and hands it to the log at once, without waiting for the log
/// to hold it: a session can then read its next `send` while this one is acknowledged,
/// and successive sends keep their order.
pub async fn submit_pipelined(
    state: &AppState,
    message: Submission,
) -> Result<PendingSend, ApiError> {
    let (message_id, record) = match prepare(state, message).await? {
        Prepared::Record(message_id, record) => (message_id, record),
        Prepared::Done(accepted) => return Ok(Box::pin(std::future::ready(Ok(accepted)))),
    };
    let pending = match state.log.enqueue(vec![record.clone()]) {
        Ok(pending) => pending,
        // A topic this node has not seen yet: the slower path looks it up.
        Err(chorus_log::LogError::UnknownTopic(_)) => {
            state.log.publish(vec![record]).await?;
            Box::pin(std::future::ready(Ok(())))
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Box::pin(async move {
        pending.await?;
        metrics::counter!("chorus_messages_accepted_total").increment(1);
        Ok(Accepted {
            message_id,
            unchanged: false,
        })
    }))
}

/// What a submission comes to before the log.
enum Prepared {
    /// Its record, to put on the log.
    Record(MessageId, Outgoing),
    /// Answered already: a change that changes nothing, or one stored before.
    Done(Accepted),
}

/// Checks a message (size, content, membership, target, rate) and builds its log
/// record.
async fn prepare(state: &AppState, message: Submission) -> Result<Prepared, ApiError> {
    let Submission {
        sender,
        session,
        conversation,
        client_msg_id,
        body,
        attachments,
        reply_to,
        change,
    } = message;
    if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID {
        return Err(ApiError::bad_request(format!(
            "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID} bytes"
        )));
    }
    // PostgreSQL cannot store NUL in text (see `BodyError::Nul`).
    if client_msg_id.contains('\0') {
        return Err(ApiError::bad_request(
            "body and client_msg_id must not contain NUL characters",
        ));
    }
    if attachments.len() > MAX_PER_MESSAGE {
        return Err(ApiError::bad_request(format!(
            "a message carries at most {MAX_PER_MESSAGE} attachments"
        )));
    }
    // A delete or a reaction has no body (the frames have none to give).
    let has_body = matches!(change, None | Some(Change::Edit(_)));
    if change.is_some() && !(attachments.is_empty() && reply_to.is_none()) {
        return Err(ApiError::bad_request(
            "only a new message carries attachments or reply_to",
        ));
    }
    check_message_body(&body, attachments.len(), state.limits.max_body_bytes)
        .or_else(|e| if has_body { Err(e) } else { Ok(()) })
        .map_err(|e| match e {
            BodyError::Empty => ApiError::bad_request(e.to_string()),
            BodyError::Nul => {
                ApiError::bad_request("body and client_msg_id must not contain NUL characters")
            }
            BodyError::TooLarge { .. } => ApiError::new(ErrorCode::TooLarge, e.to_string()),
        })?;
    if let Some(Change::React { emoji, .. }) = &change
        && (emoji.is_empty() || emoji.len() > MAX_EMOJI || emoji.chars().any(char::is_whitespace))
    {
        return Err(ApiError::bad_request(format!(
            "emoji must be 1 to {MAX_EMOJI} bytes without whitespace"
        )));
    }
    let members = require_member(state, conversation, sender).await?;
    let message_id = MessageId::derive(sender, conversation, &client_msg_id);
    // Before the rate limit, which a refused send must not use up.
    let attachments = sender_uploads(state, sender, attachments).await?;
    if let Some(target) = reply_to {
        text_in(state, conversation, target).await?;
    }
    if let Some(change) = &change
        && let Some(done) = check_change(state, sender, conversation, message_id, change).await?
    {
        return Ok(Prepared::Done(done));
    }
    state
        .limiter
        .check(sender)
        .map_err(ApiError::rate_limited)?;
    let route = state.engine.route_for(sender, &members);
    let (kind, target_id, emoji, remove) = match change {
        None => (MessageKind::Text, None, None, false),
        Some(Change::Edit(t)) => (MessageKind::Edit, Some(t), None, false),
        Some(Change::Delete(t)) => (MessageKind::Delete, Some(t), None, false),
        Some(Change::React {
            target,
            emoji,
            remove,
        }) => (MessageKind::Reaction, Some(target), Some(emoji), remove),
    };
    let event = StageEvent::Message(chorus_core::event::MessageEvent {
        mentions: Vec::new(),
        kind,
        target_id,
        emoji,
        remove,
        reply_to,
        message_id,
        client_msg_id,
        conversation_id: conversation,
        sender_id: sender,
        session_id: session,
        body,
        attachments,
        seq: None,
        sent_at: now_millis(),
        origin: Origin::User,
        hops: 0,
        route: route.clone(),
        suppress: Vec::new(),
        budget: None,
    });
    tracing::debug!(%message_id, conversation_id = %conversation, %sender, first_stage = route[0].name(), "message accepted");
    let record = Outgoing::new(
        state.topics.stage(route[0]),
        conversation.0.as_bytes().to_vec(),
        encode(&event),
    );
    Ok(Prepared::Record(message_id, record))
}

/// Checks a change against the message it changes (protocol v1.1 §2), in this order:
/// the message must be a message of the conversation (`not_found`), the sender may
/// change it (`forbidden`), it is not deleted (`not_found`, but deleting it again
/// changes nothing). A change stored before (a retry) and one that changes nothing are
/// answered at once.
async fn check_change(
    state: &AppState,
    sender: UserId,
    conversation: ConversationId,
    message_id: MessageId,
    change: &Change,
) -> Result<Option<Accepted>, ApiError> {
    let store = state.directory.store();
    let done = |unchanged| {
        Ok(Some(Accepted {
            message_id,
            unchanged,
        }))
    };
    if store.message(message_id).await?.is_some() {
        return done(false);
    }
    let target = text_in(state, conversation, change.target()).await?;
    match change {
        Change::Edit(_) if target.sender_id != sender => {
            return Err(ApiError::forbidden("only its sender edits a message"));
        }
        Change::Delete(_) if target.sender_id != sender => {
            let owner = store
                .conversation(conversation)
                .await?
                .and_then(|c| c.owner_id);
            if owner != Some(sender) {
                return Err(ApiError::forbidden(
                    "only its sender, or the group's owner, deletes a message",
                ));
            }
        }
        _ => {}
    }
    match change {
        Change::Delete(_) if target.deleted => done(true),
        _ if target.deleted => Err(ApiError::not_found(format!(
            "message {} was deleted",
            target.message_id
        ))),
        Change::React {
            target,
            emoji,
            remove,
        } if store.reacted(*target, sender, emoji).await? != *remove => done(true),
        _ => Ok(None),
    }
}

/// The shapes of the uploads a message is to carry: each must be a complete upload of
/// the sender's (`not_found` otherwise, as for one that does not exist). The same
/// upload named twice is carried once.
async fn sender_uploads(
    state: &AppState,
    sender: UserId,
    mut ids: Vec<AttachmentId>,
) -> Result<Vec<Attachment>, ApiError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    let found = state
        .directory
        .store()
        .owned_attachments(sender, &ids)
        .await?;
    if let Some(missing) = ids
        .iter()
        .find(|id| !found.iter().any(|a| a.attachment_id == **id))
    {
        return Err(ApiError::not_found(format!(
            "attachment {missing} does not exist"
        )));
    }
    Ok(found)
}

/// The message `message` of `conversation`, a message rather than a change to one
/// (`not_found` otherwise, as for a message that does not exist).
async fn text_in(
    state: &AppState,
    conversation: ConversationId,
    message: MessageId,
) -> Result<Message, ApiError> {
    match state.directory.store().message(message).await? {
        Some(m) if m.conversation_id == conversation && m.kind.is_text() => Ok(m),
        _ => Err(ApiError::not_found(format!(
            "message {message} does not exist in conversation {conversation}"
        ))),
    }
}

/// Publishes a notice for the route stage (typing, read, presence), keyed by `key`.
pub async fn notify_route(
    state: &AppState,
    key: &[u8],
    event: &StageEvent,
) -> Result<(), ApiError> {
    state
        .log
        .publish(vec![Outgoing::new(
            state.topics.stage(chorus_core::topics::Stage::Route),
            key.to_vec(),
            encode(event),
        )])
        .await?;
    Ok(())
}

/// Now, at the millisecond precision the store keeps, so that a live `message` frame
/// and the stored copy are identical.
fn now_millis() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}
