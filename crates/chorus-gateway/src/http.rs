//! The HTTP API under `/api/v1` (chat part; signing up and in are in
//! [`crate::accounts`]).

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::send::{Change, Submission, require_member, submit};
use crate::state::AppState;
use axum::extract::{FromRequest, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use chorus_core::event::{Control, encode};
use chorus_core::model::{Conversation, ConversationKind, Message, User};
use chorus_core::{ConversationId, MessageId, UserId};
use chorus_log::Outgoing;
use chorus_store::{AfterMarker, ConversationRecord, Page, SearchQuery, search_words};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// JSON body extractor whose rejections speak the protocol's error format.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Path extractor with protocol errors.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query extractor with protocol errors.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

type Shared = State<Arc<AppState>>;

/// Routes of the chat API, relative to `/api/v1`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/me", get(me))
        .route("/users", get(search_users))
        .route("/users/{id}", get(get_user))
        .route(
            "/conversations",
            post(create_conversation).get(list_conversations),
        )
        .route("/conversations/{id}", get(get_conversation))
        .route("/conversations/{id}/members", post(add_member))
        .route(
            "/conversations/{id}/members/{user_id}",
            delete(remove_member),
        )
        .route(
            "/conversations/{id}/messages",
            get(list_messages).post(post_message),
        )
        .route(
            "/conversations/{id}/messages/{message_id}",
            patch(edit_message).delete(delete_message),
        )
        .route(
            "/conversations/{id}/messages/{message_id}/reactions",
            post(react),
        )
        .route("/search", get(search))
}

async fn me(State(state): Shared, AuthUser(user): AuthUser) -> Result<Json<User>, ApiError> {
    // The token names the user; the store confirms the account still exists.
    let user = state
        .directory
        .store()
        .user(user.id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
    Ok(Json(user))
}

#[derive(Deserialize)]
struct UserQuery {
    #[serde(default)]
    query: String,
    limit: Option<i64>,
}

async fn search_users(
    State(state): Shared,
    AuthUser(_): AuthUser,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 100"));
    }
    let users = state
        .directory
        .store()
        .search_users(&q.query, limit)
        .await?;
    Ok(Json(json!({ "users": users })))
}

/// Any user, by id: how a client names the senders and members it has not seen in a
/// `GET /users` page.
async fn get_user(
    State(state): Shared,
    AuthUser(_): AuthUser,
    ApiPath(id): ApiPath<UserId>,
) -> Result<Json<User>, ApiError> {
    let user = state
        .directory
        .store()
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user {id} does not exist")))?;
    Ok(Json(user))
}

#[derive(Deserialize)]
struct NewConversation {
    kind: ConversationKind,
    #[serde(default)]
    members: Vec<UserId>,
    title: Option<String>,
}

async fn require_users(state: &AppState, ids: &[UserId]) -> Result<(), ApiError> {
    for id in ids {
        if state.directory.store().user(*id).await?.is_none() {
            return Err(ApiError::not_found(format!("user {id} does not exist")));
        }
    }
    Ok(())
}

async fn create_conversation(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiJson(req): ApiJson<NewConversation>,
) -> Result<Response, ApiError> {
    let store = state.directory.store();
    match req.kind {
        ConversationKind::Direct => {
            let mut others: Vec<UserId> = req
                .members
                .iter()
                .copied()
                .filter(|m| *m != me.id)
                .collect();
            others.dedup();
            let [other] = others[..] else {
                return Err(ApiError::bad_request(
                    "a direct conversation needs exactly one other member",
                ));
            };
            require_users(&state, &[other]).await?;
            let (record, created) = store.direct(me.id, other).await?;
            let read = store.read_seq(record.id, me.id).await?.unwrap_or(0);
            let after = after_marker_in(&state, record.id, me.id).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(record.view(read, after))).into_response())
        }
        ConversationKind::Group => {
            let title = req.title.as_deref().map(str::trim).unwrap_or_default();
            if title.is_empty() || title.chars().count() > 200 || title.contains('\0') {
                return Err(ApiError::bad_request(
                    "a group needs a title of 1 to 200 characters",
                ));
            }
            let max = state.limits.max_group_members;
            let mut members = req.members.clone();
            members.retain(|m| *m != me.id);
            members.sort_unstable();
            members.dedup();
            if members.len() + 1 > max {
                return Err(ApiError::limit_reached(format!(
                    "a group has at most {max} members, its owner included"
                )));
            }
            let owned = store.groups_owned(me.id).await?;
            if owned >= state.limits.max_groups_per_user as i64 {
                return Err(ApiError::limit_reached(format!(
                    "you own {owned} groups, the most one user may; leave one first (it passes to its longest-standing member)"
                )));
            }
            require_users(&state, &req.members).await?;
            let record = store.create_group(me.id, title, &req.members).await?;
            Ok((
                StatusCode::CREATED,
                Json(record.view(0, AfterMarker::default())),
            )
                .into_response())
        }
    }
}

async fn list_conversations(
    State(state): Shared,
    AuthUser(me): AuthUser,
) -> Result<Json<serde_json::Value>, ApiError> {
    let after = state.directory.store().after_marker(me.id).await?;
    let conversations: Vec<Conversation> = state
        .directory
        .store()
        .conversations_of(me.id)
        .await?
        .into_iter()
        .map(|(record, read)| {
            let after = after.get(&record.id).copied().unwrap_or_default();
            record.view(read, after)
        })
        .collect();
    Ok(Json(json!({ "conversations": conversations })))
}

/// What is after `user`'s read marker in `conversation`.
async fn after_marker_in(
    state: &AppState,
    conversation: ConversationId,
    user: UserId,
) -> Result<AfterMarker, ApiError> {
    let all = state.directory.store().after_marker(user).await?;
    Ok(all.get(&conversation).copied().unwrap_or_default())
}

async fn member_view(
    state: &AppState,
    id: ConversationId,
    me: UserId,
) -> Result<(ConversationRecord, i64), ApiError> {
    let store = state.directory.store();
    let record = store
        .conversation(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("conversation {id} does not exist")))?;
    if !record.members.contains(&me) {
        return Err(ApiError::forbidden(format!(
            "you are not a member of conversation {id}"
        )));
    }
    let read = store.read_seq(id, me).await?.unwrap_or(0);
    Ok((record, read))
}

async fn get_conversation(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
) -> Result<Json<Conversation>, ApiError> {
    let (record, read) = member_view(&state, id, me.id).await?;
    let after = after_marker_in(&state, id, me.id).await?;
    Ok(Json(record.view(read, after)))
}

#[derive(Deserialize)]
struct NewMember {
    user_id: UserId,
}

async fn add_member(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(req): ApiJson<NewMember>,
) -> Result<Json<Conversation>, ApiError> {
    let (record, _) = member_view(&state, id, me.id).await?;
    if record.kind != ConversationKind::Group {
        return Err(ApiError::bad_request(
            "a direct conversation's members are fixed",
        ));
    }
    if record.owner_id != Some(me.id) {
        return Err(ApiError::forbidden("only the group's owner adds members"));
    }
    let max = state.limits.max_group_members;
    if record.members.len() >= max && !record.members.contains(&req.user_id) {
        return Err(ApiError::limit_reached(format!(
            "a group has at most {max} members, its owner included"
        )));
    }
    require_users(&state, &[req.user_id]).await?;
    state.directory.store().add_member(id, req.user_id).await?;
    members_changed(&state, id).await;
    let (record, read) = member_view(&state, id, me.id).await?;
    let after = after_marker_in(&state, id, me.id).await?;
    Ok(Json(record.view(read, after)))
}

async fn remove_member(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath((id, user_id)): ApiPath<(ConversationId, UserId)>,
) -> Result<StatusCode, ApiError> {
    let (record, _) = member_view(&state, id, me.id).await?;
    if record.kind != ConversationKind::Group {
        return Err(ApiError::bad_request(
            "a direct conversation's members are fixed",
        ));
    }
    if user_id != me.id && record.owner_id != Some(me.id) {
        return Err(ApiError::forbidden(
            "only the group's owner removes other members",
        ));
    }
    if !record.members.contains(&user_id) {
        return Err(ApiError::not_found(format!(
            "user {user_id} is not a member of conversation {id}"
        )));
    }
    state.directory.store().remove_member(id, user_id).await?;
    members_changed(&state, id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Drops cached membership here at once and, through the control topic, on every
/// other node. The notice is retried in the background for a while if the log refuses
/// it; should it never get through, other nodes' cached members expire after
/// `limits.membership_cache_secs` all the same.
async fn members_changed(state: &AppState, conversation: ConversationId) {
    state.directory.invalidate(conversation);
    let notice = Control::MembersChanged {
        conversation_id: conversation,
    };
    let record = Outgoing::new(
        state.topics.control(),
        conversation.0.as_bytes().to_vec(),
        encode(&notice),
    );
    let Err(e) = state.log.publish(vec![record.clone()]).await else {
        return;
    };
    tracing::warn!(conversation_id = %conversation, error = %e, "membership notice not published; retrying");
    let log = state.log.clone();
    let ttl = std::time::Duration::from_secs(state.limits.membership_cache_secs);
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(100);
        let mut waited = std::time::Duration::ZERO;
        // Past the cache's lifetime, every node has read the members again anyway.
        while waited < ttl {
            tokio::time::sleep(backoff).await;
            waited += backoff;
            match log.publish(vec![record.clone()]).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(conversation_id = %conversation, error = %e, "membership notice still not published")
                }
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
        metrics::counter!("chorus_membership_notices_lost_total").increment(1);
        tracing::warn!(conversation_id = %conversation, "membership notice given up: other nodes catch up when their cache expires");
    });
}

#[derive(Deserialize)]
struct HistoryQuery {
    after_seq: Option<i64>,
    before_seq: Option<i64>,
    limit: Option<i64>,
    /// Only the messages answering this one.
    reply_to: Option<chorus_core::MessageId>,
}

/// Default and largest page of history.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

async fn list_messages(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit < 1 {
        return Err(ApiError::bad_request("limit must be positive"));
    }
    if q.after_seq.is_some_and(|s| s < 0) || q.before_seq.is_some_and(|s| s < 0) {
        return Err(ApiError::bad_request(
            "after_seq and before_seq must not be negative",
        ));
    }
    require_member(&state, id, me.id).await?;
    let page = Page {
        after_seq: q.after_seq,
        before_seq: q.before_seq,
        limit: limit.min(MAX_PAGE),
    };
    let store = state.directory.store();
    let messages: Vec<Message> = match q.reply_to {
        Some(target) => store.replies(id, target, page).await?,
        None => store.messages(id, page).await?,
    };
    Ok(Json(json!({ "messages": messages })))
}

#[derive(Deserialize)]
struct PostMessage {
    client_msg_id: String,
    body: String,
    #[serde(default)]
    attachments: Vec<chorus_core::AttachmentId>,
    reply_to: Option<chorus_core::MessageId>,
}

async fn post_message(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<ConversationId>,
    ApiJson(req): ApiJson<PostMessage>,
) -> Result<Response, ApiError> {
    let message = Submission {
        sender: me.id,
        session: None,
        conversation: id,
        client_msg_id: req.client_msg_id,
        body: req.body,
        attachments: req.attachments,
        reply_to: req.reply_to,
        change: None,
    };
    accepted(submit(&state, message).await?)
}

fn accepted(a: crate::send::Accepted) -> Result<Response, ApiError> {
    Ok((StatusCode::ACCEPTED, Json(a.json())).into_response())
}

#[derive(Deserialize)]
struct EditMessage {
    client_msg_id: String,
    body: String,
}

async fn edit_message(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath((id, target)): ApiPath<(ConversationId, MessageId)>,
    ApiJson(req): ApiJson<EditMessage>,
) -> Result<Response, ApiError> {
    let edit = Submission::change(
        me.id,
        None,
        id,
        req.client_msg_id,
        req.body,
        Change::Edit(target),
    );
    accepted(submit(&state, edit).await?)
}

#[derive(Deserialize)]
struct DeleteMessage {
    client_msg_id: String,
}

async fn delete_message(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath((id, target)): ApiPath<(ConversationId, MessageId)>,
    ApiQuery(q): ApiQuery<DeleteMessage>,
) -> Result<Response, ApiError> {
    let delete = Change::Delete(target);
    let delete = Submission::change(me.id, None, id, q.client_msg_id, String::new(), delete);
    accepted(submit(&state, delete).await?)
}

#[derive(Deserialize)]
struct React {
    client_msg_id: String,
    emoji: String,
    #[serde(default)]
    remove: bool,
}

async fn react(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath((id, target)): ApiPath<(ConversationId, MessageId)>,
    ApiJson(req): ApiJson<React>,
) -> Result<Response, ApiError> {
    let reaction = Change::React {
        target,
        emoji: req.emoji,
        remove: req.remove,
    };
    let react = Submission::change(me.id, None, id, req.client_msg_id, String::new(), reaction);
    accepted(submit(&state, react).await?)
}

#[derive(Deserialize)]
struct Search {
    q: String,
    conversation_id: Option<ConversationId>,
    limit: Option<i64>,
}

/// Longest search text, bytes.
const MAX_SEARCH_BYTES: usize = 256;
/// Default and largest number of search results.
const DEFAULT_RESULTS: i64 = 20;
const MAX_RESULTS: i64 = 100;

async fn search(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiQuery(q): ApiQuery<Search>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if q.q.trim().is_empty() || q.q.len() > MAX_SEARCH_BYTES {
        return Err(ApiError::bad_request(format!(
            "q must be 1 to {MAX_SEARCH_BYTES} bytes of text"
        )));
    }
    let limit = q.limit.unwrap_or(DEFAULT_RESULTS);
    if !(1..=MAX_RESULTS).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_RESULTS}"
        )));
    }
    if let Some(conversation) = q.conversation_id {
        require_member(&state, conversation, me.id).await?;
    }
    let words = search_words(&q.q);
    let results: Vec<Message> = if words.is_empty() {
        Vec::new()
    } else {
        let query = SearchQuery {
            words,
            conversation: q.conversation_id,
            limit,
        };
        state.directory.store().search(me.id, &query).await?
    };
    Ok(Json(json!({ "results": results })))
}

/// Unused path segments still answer in the protocol's format.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
