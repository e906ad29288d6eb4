//! Users' scripts on their messages: what a hook is given, what it may answer, and the
//! state it keeps, between the [`chorus_sandbox`] (which runs JavaScript under limits)
//! and the [`chorus_store`] (which keeps scripts and their state).
//!
//! The stages (`automate-out`, `automate-in`) and the gateway's dry run
//! (`POST /scripts/{id}/test`) share this crate, so a test run sees exactly what a
//! real run would.

mod actions;
mod kv;

pub use actions::{Action, parse_actions};
pub use kv::StoreKv;

use chorus_config::AutomationConfig;
use chorus_core::model::{Attachment, Hook, MessageKind, Origin, Script};
use chorus_core::topics::Stage;
use chorus_core::{ConversationId, MessageId, UserId};
use chorus_sandbox::{Call, Failure, Limits, Outcome, RunError, Sandbox};
use chorus_store::{Directory, Members};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Largest JSON a hook may return, bytes.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The message a hook is given (`msg`).
#[derive(Clone, Debug, Serialize)]
pub struct HookInput {
    /// Its id.
    pub message_id: MessageId,
    /// Where.
    pub conversation_id: ConversationId,
    /// Who sent it.
    pub sender_id: UserId,
    /// The sender's username.
    pub sender: String,
    /// The text.
    pub body: String,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// `user`, `script` or `auto_reply`.
    pub origin: Origin,
    /// The files it carries: their shapes (name, type, size, digest), never the bytes.
    pub attachments: Vec<Attachment>,
    /// The message it answers, if it answers one.
    pub reply_to: Option<MessageId>,
    /// The members it mentions (known once it is stored: `onOutgoing` sees none).
    pub mentions: Vec<UserId>,
    /// `text`, or the change it makes (`edit`, `delete`, `reaction`: `onOutgoing` only).
    pub kind: MessageKind,
    /// For a change: the message it changes.
    pub target_id: Option<MessageId>,
    /// For a reaction: the emoji.
    pub emoji: Option<String>,
    /// For a reaction: whether it is taken back.
    pub remove: bool,
}

/// Runs users' hooks: the sandboxes with the configured limits and the store behind
/// `ctx.kv`. Cheap to clone.
///
/// Two sandboxes, so that what users ask for over the API cannot starve the scripts
/// that run on messages: `hooks` runs those, `lane` the dry runs and the checks of
/// uploaded sources. Before issue 23 both shared the hook threads, and two dry runs of
/// a script looping on `ctx.kv` delayed another user's reply from 0.05 s to 152 s. The
/// lane has threads of its own (`dry_run_threads`, 1 by default), so whatever it runs,
/// message hooks keep all of theirs (the lane only competes for the CPU, as one more
/// thread); the gateway lets each user have one dry run at a time, so the lane's queue
/// holds at most one per user.
#[derive(Clone)]
pub struct Engine {
    hooks: Sandbox,
    lane: Sandbox,
    config: Arc<AutomationConfig>,
    directory: Directory,
}

/// How one hook run ended, as the owner's counts see it.
pub type RunResult = Result<Outcome, Failure>;

impl Engine {
    /// An engine running message hooks on `hooks` and dry runs and checks on `lane`,
    /// with `config`, keeping state in `directory`'s store.
    pub fn new(
        hooks: Sandbox,
        lane: Sandbox,
        config: AutomationConfig,
        directory: Directory,
    ) -> Self {
        Self {
            hooks,
            lane,
            config: Arc::new(config),
            directory,
        }
    }

    /// Compiles `source` on the lane and returns the functions it exports, sorted.
    pub async fn check(&self, source: &str) -> Result<Vec<String>, RunError> {
        self.lane.check(source).await
    }

    /// Runs `script`'s `hook` on `input` on the lane, from a fresh instance; `ctx.kv`
    /// reads the stored state but keeps its writes to this run.
    pub async fn dry_run(&self, script: &Script, hook: Hook, input: &HookInput) -> RunResult {
        let call = self.call_with(script, hook, input, true);
        self.lane.call(call).await
    }

    /// The limits and defaults.
    pub fn config(&self) -> &AutomationConfig {
        &self.config
    }

    /// The membership and automation caches.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The auto-reply window.
    pub fn auto_reply_window(&self) -> Duration {
        Duration::from_secs(self.config.auto_reply_window_secs)
    }

    /// A call of `script`'s `hook` on `input`, for [`Engine::run`].
    pub fn call(&self, script: &Script, hook: Hook, input: &HookInput) -> Call {
        self.call_with(script, hook, input, false)
    }

    /// A call of `script`'s `hook` on `input`. With `dry_run`, `ctx.kv` reads the
    /// stored state but keeps its writes to this call.
    fn call_with(&self, script: &Script, hook: Hook, input: &HookInput, dry_run: bool) -> Call {
        let kv = StoreKv::new(
            self.directory.store().clone(),
            script.id,
            &self.config,
            dry_run,
        );
        Call {
            owner: script.owner_id.to_string(),
            key: format!("script:{}:{}", script.id, script.version),
            source: Arc::from(script.source.as_str()),
            function: hook.function().to_owned(),
            args: vec![serde_json::to_value(input).unwrap_or_default()],
            with_ctx: true,
            kv: Some(Box::new(kv)),
            limits: Limits {
                memory_bytes: usize::try_from(script.memory_bytes).unwrap_or(usize::MAX),
                cpu: Duration::from_millis(script.cpu_ms),
                kv_time: Duration::from_millis(self.config.kv_time_ms),
                kv_calls: self.config.kv_max_calls,
            },
            max_output_bytes: MAX_OUTPUT_BYTES,
        }
    }

    /// Runs calls (a batch's worth) on the hook threads, results in the same order.
    pub async fn run(&self, calls: Vec<Call>) -> Vec<RunResult> {
        self.hooks.call_batch(calls).await
    }

    /// The routing slip of a message `sender` sends to a conversation with `members`:
    /// the automation stages only when someone has automation there.
    pub fn route_for(&self, sender: UserId, members: &Members) -> Vec<Stage> {
        route_for(&self.directory, sender, members)
    }
}

/// The routing slip of a message from `sender` to a conversation with `members`:
/// `automate-out` only if the sender has outgoing scripts, `automate-in` only if
/// another member has incoming scripts or an auto-reply.
pub fn route_for(directory: &Directory, sender: UserId, members: &Members) -> Vec<Stage> {
    let automations = directory.automations();
    let mut route = Vec::with_capacity(4);
    if automations.has(sender, Hook::Outgoing) {
        route.push(Stage::AutomateOut);
    }
    route.push(Stage::Store);
    if members
        .iter()
        .any(|m| m != sender && automations.has(m, Hook::Incoming))
    {
        route.push(Stage::AutomateIn);
    }
    route.push(Stage::Route);
    route
}

/// The stable name of a run's outcome, for metrics and `last_error.code`.
pub fn outcome_code(result: &RunResult) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(f) => f.error.code(),
    }
}

/// Whether a failure is the script's own (as opposed to the sandbox being unable to
/// run anything), and so counts against it.
pub fn is_script_failure(error: &RunError) -> bool {
    !matches!(error, RunError::Unavailable(_))
}

/// Checks a script's requested limits against the administrator's maxima.
pub fn check_limits(
    config: &AutomationConfig,
    memory_bytes: Option<u64>,
    cpu_ms: Option<u64>,
) -> Result<(u64, u64), String> {
    let memory = memory_bytes.unwrap_or(config.memory_bytes);
    let cpu = cpu_ms.unwrap_or(config.cpu_ms);
    if !(256 * 1024..=config.max_memory_bytes).contains(&memory) {
        return Err(format!(
            "memory_bytes must be 262144 to {}",
            config.max_memory_bytes
        ));
    }
    if !(1..=config.max_cpu_ms).contains(&cpu) {
        return Err(format!("cpu_ms must be 1 to {}", config.max_cpu_ms));
    }
    Ok((memory, cpu))
}
