//! The one path every message takes into the pipeline, from WebSocket or HTTP.

use crate::attachments::MAX_PER_MESSAGE;
use crate::error::ApiError;
use crate::state::AppState;
use chorus_core::body::{BodyError, check_message_body};
use chorus_core::event::{StageEvent, encode};
use chorus_core::model::Attachment;
use chorus_core::model::Origin;
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
}

/// Validates a message and puts it on the log; returns its id once the log holds it.
pub async fn submit(state: &AppState, message: Submission) -> Result<MessageId, ApiError> {
    submit_pipelined(state, message).await?.await
}

/// A send in flight on the log; resolves to the message id once the log holds it.
pub type PendingSend = futures::future::BoxFuture<'static, Result<MessageId, ApiError>>;

/// Validates a message and hands it to the log at once, without waiting for the log
/// to hold it: a session can then read its next `send` while this one is acknowledged,
/// and successive sends keep their order.
pub async fn submit_pipelined(
    state: &AppState,
    message: Submission,
) -> Result<PendingSend, ApiError> {
    let (message_id, record) = prepare(state, message).await?;
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
        Ok(message_id)
    }))
}

/// Checks a message (size, content, membership, rate) and builds its log record.
async fn prepare(state: &AppState, message: Submission) -> Result<(MessageId, Outgoing), ApiError> {
    let Submission {
        sender,
        session,
        conversation,
        client_msg_id,
        body,
        attachments,
        reply_to,
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
    check_message_body(&body, attachments.len(), state.limits.max_body_bytes).map_err(
        |e| match e {
            BodyError::Empty => ApiError::bad_request(e.to_string()),
            BodyError::Nul => {
                ApiError::bad_request("body and client_msg_id must not contain NUL characters")
            }
            BodyError::TooLarge { .. } => ApiError::new(ErrorCode::TooLarge, e.to_string()),
        },
    )?;
    let members = require_member(state, conversation, sender).await?;
    // Before the rate limit, which a refused send must not use up.
    let attachments = sender_uploads(state, sender, attachments).await?;
    if let Some(target) = reply_to {
        require_in(state, conversation, target).await?;
    }
    state
        .limiter
        .check(sender)
        .map_err(ApiError::rate_limited)?;
    let message_id = MessageId::derive(sender, conversation, &client_msg_id);
    let route = state.engine.route_for(sender, &members);
    let event = StageEvent::Message(chorus_core::event::MessageEvent {
        mentions: Vec::new(),
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
    Ok((message_id, record))
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

/// Checks that `message` is one of `conversation`'s (`not_found` otherwise, as for a
/// message that does not exist).
async fn require_in(
    state: &AppState,
    conversation: ConversationId,
    message: MessageId,
) -> Result<(), ApiError> {
    match state.directory.store().message(message).await? {
        Some(m) if m.conversation_id == conversation => Ok(()),
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
