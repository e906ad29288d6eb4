//! What both automation stages share: the hook input, the messages automation sends,
//! and the bookkeeping of runs (counts, failures, disabling) per batch.

use crate::runner::{StageContext, StageError};
use chorus_automation::{HookInput, RunResult, is_script_failure, outcome_code};
use chorus_core::event::{Control, Delivery, MessageEvent, StageEvent, encode};
use chorus_core::model::{Hook, Origin, Script, ScriptError};
use chorus_core::{ConversationId, MessageId, ScriptId, UserId};
use chorus_log::Outgoing;
use chorus_store::ScriptRuns;
use std::collections::HashMap;
use std::sync::Arc;

/// Usernames kept per stage instance (they never change).
const NAMES: usize = 100_000;

/// Usernames by id, for `msg.sender`.
#[derive(Default)]
pub struct Names {
    names: HashMap<UserId, Arc<str>>,
}

impl Names {
    /// The username of `user` ("" if it no longer exists).
    pub async fn get(&mut self, ctx: &StageContext, user: UserId) -> Result<Arc<str>, StageError> {
        if let Some(n) = self.names.get(&user) {
            return Ok(n.clone());
        }
        let name: Arc<str> = match ctx.directory.store().user(user).await? {
            Some(u) => u.username.into(),
            None => "".into(),
        };
        if self.names.len() >= NAMES {
            self.names.clear();
        }
        self.names.insert(user, name.clone());
        Ok(name)
    }

    /// What a hook is given for `m`.
    pub async fn input(
        &mut self,
        ctx: &StageContext,
        m: &MessageEvent,
    ) -> Result<HookInput, StageError> {
        Ok(HookInput {
            message_id: m.message_id,
            conversation_id: m.conversation_id,
            sender_id: m.sender_id,
            sender: self.get(ctx, m.sender_id).await?.to_string(),
            body: m.body.clone(),
            sent_at: m.sent_at,
            origin: m.origin,
        })
    }
}

/// Runs of each script in one batch, recorded at its end.
#[derive(Default)]
pub struct RunBook {
    runs: HashMap<ScriptId, (UserId, ScriptRuns)>,
}

impl RunBook {
    /// Notes one run of `script` on `hook`; returns the failure, if any, as the owner
    /// will see it.
    pub fn note(&mut self, script: &Script, hook: Hook, result: &RunResult) -> Option<ScriptError> {
        let code = outcome_code(result);
        metrics::counter!("chorus_script_runs_total", "hook" => hook.as_str(), "outcome" => code)
            .increment(1);
        let (elapsed, logs) = match result {
            Ok(o) => (o.elapsed, &o.logs),
            Err(f) => (f.elapsed, &f.logs),
        };
        metrics::histogram!("chorus_script_run_seconds", "hook" => hook.as_str())
            .record(elapsed.as_secs_f64());
        let error = match result {
            Ok(_) => None,
            Err(f) if !is_script_failure(&f.error) => {
                tracing::warn!(script_id = %script.id, error = %f.error, "script not run");
                return None;
            }
            Err(f) => Some(ScriptError {
                code: code.to_owned(),
                message: f.error.to_string(),
                at: chrono::Utc::now(),
            }),
        };
        self.record(script, logs.clone(), error.clone());
        error
    }

    /// Notes a run that returned something unusable.
    pub fn bad_action(&mut self, script: &Script, hook: Hook, message: String) -> ScriptError {
        metrics::counter!("chorus_script_runs_total", "hook" => hook.as_str(), "outcome" => "bad_action")
            .increment(1);
        let error = ScriptError {
            code: "bad_action".into(),
            message,
            at: chrono::Utc::now(),
        };
        // The run itself was counted as good by `note`: turn it into a failure.
        if let Some((_, r)) = self.runs.get_mut(&script.id) {
            r.failures += 1;
            r.trailing_failures += 1;
            r.last_error = Some(error.clone());
        }
        error
    }

    fn record(&mut self, script: &Script, logs: Vec<String>, error: Option<ScriptError>) {
        let (_, r) = self.runs.entry(script.id).or_insert_with(|| {
            (
                script.owner_id,
                ScriptRuns {
                    id: script.id,
                    runs: 0,
                    failures: 0,
                    any_ok: false,
                    trailing_failures: 0,
                    last_error: None,
                    last_logs: Vec::new(),
                },
            )
        });
        r.runs += 1;
        r.last_logs = logs;
        match error {
            None => {
                r.any_ok = true;
                r.trailing_failures = 0;
            }
            Some(e) => {
                r.failures += 1;
                r.trailing_failures += 1;
                r.last_error = Some(e);
            }
        }
    }

    /// Stores the counts; scripts that failed too often in a row are disabled, their
    /// owners' caches refreshed everywhere and the owners told.
    pub async fn finish(self, ctx: &StageContext) -> Result<Vec<Outgoing>, StageError> {
        if self.runs.is_empty() {
            return Ok(Vec::new());
        }
        let runs: Vec<ScriptRuns> = self.runs.into_values().map(|(_, r)| r).collect();
        let disable_after = i64::from(ctx.engine.config().disable_after_failures);
        let disabled = ctx
            .directory
            .store()
            .record_script_runs(&runs, disable_after)
            .await?;
        let mut out = Vec::new();
        for script in disabled {
            metrics::counter!("chorus_scripts_disabled_total").increment(1);
            tracing::info!(script_id = %script.id, owner = %script.owner_id, reason = ?script.disabled_reason, "script disabled");
            ctx.directory.automations().refresh(script.owner_id).await?;
            out.push(Outgoing::new(
                ctx.topics.control(),
                script.owner_id.0.as_bytes().to_vec(),
                encode(&Control::AutomationChanged {
                    user_id: script.owner_id,
                }),
            ));
            let notice = Delivery::Notice {
                kind: "script_disabled".into(),
                message: format!(
                    "your script \"{}\" was {}",
                    script.name,
                    script.disabled_reason.as_deref().unwrap_or("disabled")
                ),
                script_id: Some(script.id),
                recipients: vec![script.owner_id],
            };
            out.extend(
                to_nodes(
                    ctx,
                    &[script.owner_id],
                    script.owner_id.0.as_bytes(),
                    |_| notice.clone(),
                )
                .await?,
            );
        }
        Ok(out)
    }
}

/// One delivery record per node holding sessions of `users`.
pub async fn to_nodes(
    ctx: &StageContext,
    users: &[UserId],
    key: &[u8],
    make: impl Fn(Vec<UserId>) -> Delivery,
) -> Result<Vec<Outgoing>, StageError> {
    Ok(ctx
        .registry
        .locate(users)
        .await?
        .into_iter()
        .map(|(node, users)| {
            Outgoing::new(
                ctx.topics.deliver(&node),
                key.to_vec(),
                encode(&make(users)),
            )
        })
        .collect())
}

/// Why automation did not send a message.
pub enum NotSent {
    /// The chain of automated messages reached its hop limit.
    ChainEnds,
    /// The script asked for something impossible (counts as its failure).
    Invalid(String),
}

/// Builds the messages automation sends on behalf of owners.
pub struct Sends<'a> {
    ctx: &'a StageContext,
    /// Records to publish.
    pub out: Vec<Outgoing>,
}

impl<'a> Sends<'a> {
    /// Nothing sent yet.
    pub fn new(ctx: &'a StageContext) -> Self {
        Self {
            ctx,
            out: Vec::new(),
        }
    }

    /// Sends `body` as `owner` to `conversation`, caused by `trigger`; `tag` makes the
    /// derived id (a replayed batch sends the same message, which is stored once).
    /// Returns why not, when the message cannot be sent.
    pub async fn send(
        &mut self,
        owner: UserId,
        conversation: ConversationId,
        body: String,
        origin: Origin,
        trigger: &MessageEvent,
        tag: String,
    ) -> Result<Result<(), NotSent>, StageError> {
        let hops = trigger.hops + 1;
        if hops > self.ctx.engine.config().max_hops {
            // Two bots answering each other: neither is at fault, the chain just ends.
            metrics::counter!("chorus_automation_chain_stopped_total").increment(1);
            tracing::debug!(%owner, %conversation, hops, "automation chain stopped");
            return Ok(Err(NotSent::ChainEnds));
        }
        if body.is_empty() || body.len() > self.ctx.max_body_bytes || body.contains('\0') {
            return Ok(Err(NotSent::Invalid(format!(
                "not sent: a message is 1 to {} bytes without NUL",
                self.ctx.max_body_bytes
            ))));
        }
        let members = self.ctx.directory.members(conversation).await?;
        if !members.contains(owner) {
            return Ok(Err(NotSent::Invalid(format!(
                "not sent: you are not a member of conversation {conversation}"
            ))));
        }
        let route = self.ctx.engine.route_for(owner, &members);
        let message_id = MessageId::derive(owner, conversation, &tag);
        let event = MessageEvent {
            message_id,
            client_msg_id: tag,
            conversation_id: conversation,
            sender_id: owner,
            session_id: None,
            body,
            seq: None,
            sent_at: now_millis(),
            origin,
            hops,
            route: route.clone(),
            suppress: Vec::new(),
        };
        metrics::counter!("chorus_automation_messages_total", "origin" => origin.as_str())
            .increment(1);
        self.out.push(Outgoing::new(
            self.ctx.topics.stage(route[0]),
            conversation.0.as_bytes().to_vec(),
            encode(&StageEvent::Message(event)),
        ));
        Ok(Ok(()))
    }
}

/// Now, at the millisecond precision the store keeps.
fn now_millis() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}
