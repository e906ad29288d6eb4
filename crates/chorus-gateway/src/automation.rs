//! The HTTP API of automation under `/api/v1`: the auto-reply setting and scripts
//! (create, list, read, change, delete, dry run). Scripts belong to their owner: any
//! other user gets `not_found`, as if they did not exist.

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chorus_automation::{HookInput, check_limits, parse_actions};
use chorus_core::body::{BodyError, check_body};
use chorus_core::event::{Control, encode};
use chorus_core::model::{AutoReply, Hook, Origin, Script};
use chorus_core::{ConversationId, MessageId, ScriptId, UserId};
use chorus_log::Outgoing;
use chorus_sandbox::RunError;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

type Shared = State<Arc<AppState>>;

/// Longest script name, bytes.
const MAX_NAME: usize = 100;

/// Routes of automation, relative to `/api/v1`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/settings/auto-reply",
            get(get_auto_reply).put(put_auto_reply),
        )
        .route("/scripts", get(list_scripts).post(create_script))
        .route(
            "/scripts/{id}",
            get(get_script).put(update_script).delete(delete_script),
        )
        .route("/scripts/{id}/test", post(test_script))
}

/// Applies a change of `user`'s automation here at once, and on other nodes when they
/// read the notice.
async fn automation_changed(state: &AppState, user: UserId) -> Result<(), ApiError> {
    state.directory.automations().refresh(user).await?;
    let record = Outgoing::new(
        state.topics.control(),
        user.0.as_bytes().to_vec(),
        encode(&Control::AutomationChanged { user_id: user }),
    );
    if let Err(e) = state.log.publish(vec![record]).await {
        // Stored; other nodes pick it up when they restart or the user changes it again.
        tracing::warn!(%user, error = %e, "automation notice not published");
    }
    Ok(())
}

async fn get_auto_reply(
    State(state): Shared,
    AuthUser(me): AuthUser,
) -> Result<Json<AutoReply>, ApiError> {
    Ok(Json(state.directory.store().auto_reply(me.id).await?))
}

async fn put_auto_reply(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiJson(reply): ApiJson<AutoReply>,
) -> Result<Json<AutoReply>, ApiError> {
    if reply.enabled && reply.text.trim().is_empty() {
        return Err(ApiError::bad_request("an enabled auto-reply needs a text"));
    }
    check_auto_reply(&state, &reply.text)?;
    state
        .directory
        .store()
        .set_auto_reply(me.id, &reply)
        .await?;
    automation_changed(&state, me.id).await?;
    Ok(Json(reply))
}

/// The text of an auto-reply is a message body, except that a disabled one may be empty.
fn check_auto_reply(state: &AppState, text: &str) -> Result<(), ApiError> {
    match check_body(text, state.limits.max_body_bytes) {
        Ok(()) | Err(BodyError::Empty) => Ok(()),
        Err(BodyError::Nul | BodyError::TooLarge { .. }) => Err(ApiError::bad_request(format!(
            "text must be at most {} bytes, without NUL",
            state.limits.max_body_bytes
        ))),
    }
}

/// A script as its owner writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptDraft {
    name: Option<String>,
    source: Option<String>,
    hooks: Option<Vec<Hook>>,
    enabled: Option<bool>,
    fail_closed: Option<bool>,
    memory_bytes: Option<u64>,
    cpu_ms: Option<u64>,
}

/// Checks a draft over `script` (a new one or a stored one) and applies it.
async fn apply(state: &AppState, script: &mut Script, draft: ScriptDraft) -> Result<(), ApiError> {
    let config = state.engine.config();
    if let Some(name) = draft.name {
        if name.trim().is_empty() || name.len() > MAX_NAME || name.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "name must be 1 to {MAX_NAME} bytes, without NUL"
            )));
        }
        script.name = name;
    }
    if let Some(mut hooks) = draft.hooks {
        hooks.sort_unstable();
        hooks.dedup();
        if hooks.is_empty() {
            return Err(ApiError::bad_request(
                "hooks must name `incoming`, `outgoing` or both",
            ));
        }
        script.hooks = hooks;
    }
    if let Some(source) = draft.source {
        if source.len() > config.max_source_bytes || source.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "source must be at most {} bytes, without NUL",
                config.max_source_bytes
            )));
        }
        script.source = source;
    }
    let (memory, cpu) = check_limits(
        config,
        draft.memory_bytes.or(Some(script.memory_bytes)),
        draft.cpu_ms.or(Some(script.cpu_ms)),
    )
    .map_err(ApiError::bad_request)?;
    script.memory_bytes = memory;
    script.cpu_ms = cpu;
    if let Some(enabled) = draft.enabled {
        if enabled && !script.enabled {
            // Enabled again by its owner: a fresh start.
            script.disabled_reason = None;
            script.consecutive_failures = 0;
        }
        script.enabled = enabled;
    }
    if let Some(fail_closed) = draft.fail_closed {
        script.fail_closed = fail_closed;
    }
    let exported = state
        .engine
        .check(&script.source)
        .await
        .map_err(compile_error)?;
    for hook in &script.hooks {
        if !exported.iter().any(|f| f == hook.function()) {
            return Err(ApiError::bad_request(format!(
                "the script runs on `{}` but does not export a function `{}`",
                hook.as_str(),
                hook.function()
            )));
        }
    }
    Ok(())
}

fn compile_error(e: RunError) -> ApiError {
    match e {
        RunError::Compile {
            message,
            line,
            column,
        } => {
            let at = match (line, column) {
                (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
                (Some(l), None) => format!(" (line {l})"),
                _ => String::new(),
            };
            let mut error =
                ApiError::bad_request(format!("the script does not compile: {message}{at}"));
            error.line = line;
            error.column = column;
            error
        }
        RunError::Unavailable(why) => ApiError::unavailable(&why),
        other => ApiError::bad_request(format!("the script does not load: {other}")),
    }
}

async fn create_script(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiJson(draft): ApiJson<ScriptDraft>,
) -> Result<Response, ApiError> {
    if draft.name.is_none() || draft.source.is_none() || draft.hooks.is_none() {
        return Err(ApiError::bad_request(
            "a script needs name, source and hooks",
        ));
    }
    let store = state.directory.store();
    let config = state.engine.config();
    if store.scripts_of(me.id).await?.len() >= config.max_scripts_per_user {
        return Err(ApiError::new(
            chorus_core::ErrorCode::Conflict,
            format!(
                "you have {} scripts, the most allowed",
                config.max_scripts_per_user
            ),
        ));
    }
    let now = now_millis();
    let mut script = Script {
        id: ScriptId::new(),
        owner_id: me.id,
        name: String::new(),
        source: String::new(),
        hooks: Vec::new(),
        enabled: true,
        fail_closed: false,
        memory_bytes: config.memory_bytes,
        cpu_ms: config.cpu_ms,
        version: 1,
        runs: 0,
        failures: 0,
        consecutive_failures: 0,
        last_error: None,
        last_logs: Vec::new(),
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    };
    apply(&state, &mut script, draft).await?;
    store.create_script(&script).await?;
    automation_changed(&state, me.id).await?;
    Ok((StatusCode::CREATED, Json(script)).into_response())
}

async fn list_scripts(
    State(state): Shared,
    AuthUser(me): AuthUser,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scripts = state.directory.store().scripts_of(me.id).await?;
    Ok(Json(json!({ "scripts": scripts })))
}

/// The script `id` of `owner`, or `not_found`.
async fn owned(state: &AppState, owner: UserId, id: ScriptId) -> Result<Script, ApiError> {
    match state.directory.store().script(id).await? {
        Some(s) if s.owner_id == owner => Ok(s),
        _ => Err(ApiError::not_found(format!("script {id} does not exist"))),
    }
}

async fn get_script(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<ScriptId>,
) -> Result<Json<Script>, ApiError> {
    Ok(Json(owned(&state, me.id, id).await?))
}

async fn update_script(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<ScriptId>,
    ApiJson(draft): ApiJson<ScriptDraft>,
) -> Result<Json<Script>, ApiError> {
    let mut script = owned(&state, me.id, id).await?;
    apply(&state, &mut script, draft).await?;
    script.version += 1;
    script.updated_at = now_millis();
    state.directory.store().update_script(&script).await?;
    automation_changed(&state, me.id).await?;
    Ok(Json(script))
}

async fn delete_script(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<ScriptId>,
) -> Result<StatusCode, ApiError> {
    owned(&state, me.id, id).await?;
    state.directory.store().delete_script(id).await?;
    automation_changed(&state, me.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Users with a dry run under way. A user gets one at a time, so that one user's dry
/// runs cannot fill the lane they run on (see `chorus_automation::Engine`): its queue
/// holds at most one per user, and any user's dry run waits for at most one of each
/// other user's. A request given up by its client frees its place at once; the sandbox
/// skips its run if it has not started.
#[derive(Default)]
pub struct DryRuns {
    running: Mutex<HashSet<UserId>>,
}

/// A user's place in [`DryRuns`], given back when dropped.
pub struct DryRunning<'a> {
    runs: &'a DryRuns,
    user: UserId,
}

impl DryRuns {
    /// The place of `user`, unless they have a dry run under way.
    pub fn begin(&self, user: UserId) -> Option<DryRunning<'_>> {
        let inserted = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user);
        // Made after the lock is released, and only then: its drop takes the lock.
        inserted.then(|| DryRunning { runs: self, user })
    }
}

impl Drop for DryRunning<'_> {
    fn drop(&mut self) {
        self.runs
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.user);
    }
}

/// When a user with a dry run under way may try again: a dry run takes at most its
/// `cpu_ms` and `kv_time_ms`, often much less.
const DRY_RUN_RETRY_MS: u64 = 1000;

/// A dry run's message: what is missing is made up.
#[derive(Deserialize)]
struct TestMessage {
    body: String,
    /// Shapes for the script to see; a dry run reads no files.
    #[serde(default)]
    attachments: Vec<chorus_core::model::Attachment>,
    reply_to: Option<MessageId>,
    #[serde(default)]
    mentions: Vec<UserId>,
    #[serde(default)]
    kind: chorus_core::model::MessageKind,
    target_id: Option<MessageId>,
    emoji: Option<String>,
    #[serde(default)]
    remove: bool,
    conversation_id: Option<ConversationId>,
    sender_id: Option<UserId>,
    sender: Option<String>,
    origin: Option<Origin>,
}

#[derive(Deserialize)]
struct TestRun {
    message: TestMessage,
    hook: Option<Hook>,
}

async fn test_script(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<ScriptId>,
    ApiJson(run): ApiJson<TestRun>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let script = owned(&state, me.id, id).await?;
    let _running = state.dry_runs.begin(me.id).ok_or_else(|| ApiError {
        message: "you have a dry run under way: one at a time".to_owned(),
        ..ApiError::rate_limited(DRY_RUN_RETRY_MS)
    })?;
    let hook = match run.hook {
        Some(h) => h,
        None => *script
            .hooks
            .first()
            .ok_or_else(|| ApiError::bad_request("say which hook to test"))?,
    };
    let m = run.message;
    let (sender_id, sender) = match hook {
        // The owner's own message.
        Hook::Outgoing => (me.id, me.username.clone()),
        Hook::Incoming => (
            m.sender_id.unwrap_or(UserId(uuid::Uuid::nil())),
            m.sender.unwrap_or_else(|| "someone".into()),
        ),
    };
    let conversation_id = m
        .conversation_id
        .unwrap_or(ConversationId(uuid::Uuid::nil()));
    let input = HookInput {
        message_id: MessageId::derive(sender_id, conversation_id, "test"),
        conversation_id,
        sender_id,
        sender,
        body: m.body,
        sent_at: now_millis(),
        origin: m.origin.unwrap_or(Origin::User),
        attachments: m.attachments,
        reply_to: m.reply_to,
        mentions: m.mentions,
        kind: m.kind,
        target_id: m.target_id,
        emoji: m.emoji,
        remove: m.remove,
    };
    let result = state.engine.dry_run(&script, hook, &input).await;
    let (logs, elapsed, outcome) = match result {
        Ok(o) => (o.logs, o.elapsed, Ok(o.value)),
        Err(f) => (f.logs, f.elapsed, Err(f.error)),
    };
    let (actions, error) = match outcome {
        Ok(value) => match parse_actions(hook, value) {
            Ok(actions) => (actions, None),
            Err(message) => (
                Vec::new(),
                Some(json!({"code": "bad_action", "message": message})),
            ),
        },
        Err(e) => (
            Vec::new(),
            Some(json!({"code": e.code(), "message": e.to_string()})),
        ),
    };
    Ok(Json(json!({
        "hook": hook,
        "actions": actions,
        "logs": logs,
        "elapsed_us": u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "error": error,
    })))
}

/// Now, at the millisecond precision the store keeps.
fn now_millis() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}
