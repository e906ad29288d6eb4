//! What both automation stages share: the hook input, the messages automation sends,
//! and the bookkeeping of runs (counts, failures, disabling) per batch.

use crate::runner::{StageContext, StageError};
use chorus_automation::{Action, HookInput, RunResult, is_script_failure, outcome_code};
use chorus_core::body::check_body;
use chorus_core::event::{Control, Delivery, MessageEvent, StageEvent, encode};
use chorus_core::model::{Hook, MessageKind, Origin, Script, ScriptError};
use chorus_core::{ConversationId, MessageId, ScriptId, UserId};
use chorus_log::Outgoing;
use chorus_store::{Members, ScriptRuns};
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
            attachments: m.attachments.clone(),
            reply_to: m.reply_to,
            mentions: m.mentions.clone(),
            kind: m.kind,
            target_id: m.target_id,
            emoji: m.emoji.clone(),
            remove: m.remove,
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

    /// Adds a line of chorus's own, once, to the logs the owner sees of `script`'s last
    /// run in this batch (what a limit did to what it asked for).
    fn notice(&mut self, script: &Script, line: &str) {
        if let Some((_, r)) = self.runs.get_mut(&script.id)
            && !r.last_logs.iter().any(|l| l == line)
        {
            r.last_logs.push(line.to_owned());
        }
    }

    /// Notes what became of the messages scripts asked to send (`by`: the script that
    /// asked, `None` for an auto-reply): an impossible one is its script's failure, one
    /// a limit stopped is a line in its logs.
    fn sent(
        &mut self,
        hook: Hook,
        by: Vec<Option<Arc<Script>>>,
        results: Vec<Result<(), NotSent>>,
    ) {
        for (script, result) in by.into_iter().zip(results) {
            let Err(why) = result else { continue };
            match (script, why) {
                (Some(script), NotSent::Invalid(message)) => {
                    self.bad_action(&script, hook, message);
                }
                (Some(script), why) => {
                    if let Some(line) = why.limit_notice() {
                        self.notice(&script, line);
                    }
                }
                (None, why) => tracing::debug!(?why, "auto-reply not sent"),
            }
        }
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

/// The `error` that answers, after its `accepted`, a message or change of `m`'s
/// sending session that is not stored after all (nothing to tell for one sent over
/// HTTP, which has no session).
pub async fn tell_sender(
    ctx: &StageContext,
    m: &MessageEvent,
    code: chorus_core::ErrorCode,
    message: String,
) -> Result<Vec<crate::runner::Output>, StageError> {
    let Some(session_id) = m.session_id else {
        return Ok(Vec::new());
    };
    let delivery = Delivery::Rejected {
        user_id: m.sender_id,
        session_id,
        client_msg_id: m.client_msg_id.clone(),
        code,
        message,
    };
    Ok(
        to_nodes(ctx, &[m.sender_id], m.conversation_id.0.as_bytes(), |_| {
            delivery.clone()
        })
        .await?
        .into_iter()
        .map(crate::runner::Output::Record)
        .collect(),
    )
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

/// A message automation wants to send as `owner`.
struct Wanted {
    /// On whose behalf.
    owner: UserId,
    /// Where.
    conversation: ConversationId,
    /// The text.
    body: String,
    /// `script` or `auto_reply`.
    origin: Origin,
    /// Makes the derived id: a replayed batch sends the same message, stored once.
    tag: String,
}

/// The messages automation asked to send because of one message, in the order they
/// were asked for, each with the script that asked (`None` for an auto-reply).
#[derive(Default)]
pub(crate) struct Asked {
    wanted: Vec<Wanted>,
    by: Vec<Option<Arc<Script>>>,
}

impl Asked {
    /// The replies and forwards among the actions `owner`'s scripts returned on `m`.
    ///
    /// Each message's id derives from its tag: the script, the triggering message and
    /// the action's place in `actions` (every action counts, sent or not). A replayed
    /// batch asks again with the same tags and the store keeps each message once, so
    /// the tags must not change between versions either.
    pub(crate) fn script_sends(
        &mut self,
        owner: UserId,
        m: &MessageEvent,
        actions: &[(Arc<Script>, Action)],
    ) {
        for (n, (script, action)) in actions.iter().enumerate() {
            let (conversation, body) = match action {
                Action::Reply(body) => (m.conversation_id, body.clone()),
                Action::Forward(to) => (*to, m.body.clone()),
                Action::Rewrite(_) | Action::Drop(_) => continue,
            };
            self.wanted.push(Wanted {
                owner,
                conversation,
                body,
                origin: Origin::Script,
                tag: format!("script:{}:{}:{n}", script.id, m.message_id),
            });
            self.by.push(Some(script.clone()));
        }
    }

    /// `owner`'s auto-reply `text` to `m`, tagged by `m` alone (one per message).
    pub(crate) fn auto_reply(&mut self, owner: UserId, m: &MessageEvent, text: String) {
        self.wanted.push(Wanted {
            owner,
            conversation: m.conversation_id,
            body: text,
            origin: Origin::AutoReply,
            tag: format!("auto:{}", m.message_id),
        });
        self.by.push(None);
    }
}

/// Why automation did not send a message.
#[derive(Debug, PartialEq, Eq)]
pub enum NotSent {
    /// The chain of automated messages reached its hop limit.
    ChainEnds,
    /// The triggering message's fan-out budget is spent.
    OverBudget,
    /// The owner is over their send rate.
    RateLimited,
    /// The script asked for something impossible (counts as its failure).
    Invalid(String),
}

impl NotSent {
    /// What the owner reads in their script's logs about a message not sent for a
    /// limit (`None` for the chain's end, which is nobody's fault, and for failures,
    /// which are reported as such).
    pub fn limit_notice(&self) -> Option<&'static str> {
        match self {
            Self::OverBudget => Some(
                "chorus: a message was not sent: the message that caused it may cause no more (automation.fanout_budget)",
            ),
            Self::RateLimited => {
                Some("chorus: a message was not sent: you are over your send rate")
            }
            Self::ChainEnds | Self::Invalid(_) => None,
        }
    }
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

    /// Sends what automation asked to send because of `trigger`, in order, and notes
    /// in `book` (for `hook`) what became of each.
    ///
    /// Two bounds keep one message from turning into many: the chain's depth
    /// (`max_hops`) and the trigger's fan-out budget, which counts every later
    /// generation. At most `budget` messages are sent; what is left of the budget is
    /// split evenly among them, so nothing one person's message causes, however many
    /// scripts answer each other, exceeds the budget in total. When the trigger itself
    /// `goes_on` to more automation (from `automate-out` to `automate-in`), it keeps a
    /// share like each message sent. Each message also takes a token from its owner's
    /// send rate.
    pub(crate) async fn send_all(
        &mut self,
        trigger: &mut MessageEvent,
        asked: Asked,
        goes_on: bool,
        book: &mut RunBook,
        hook: Hook,
    ) -> Result<(), StageError> {
        let results = self.send(trigger, asked.wanted, goes_on).await?;
        book.sent(hook, asked.by, results);
        Ok(())
    }

    /// [`Sends::send_all`] without the bookkeeping: says for each whether it was sent.
    async fn send(
        &mut self,
        trigger: &mut MessageEvent,
        wanted: Vec<Wanted>,
        goes_on: bool,
    ) -> Result<Vec<Result<(), NotSent>>, StageError> {
        let config = self.ctx.engine.config();
        let hops = trigger.hops + 1;
        let budget = trigger.budget.unwrap_or(config.fanout_budget);
        let mut results = Vec::with_capacity(wanted.len());
        let mut ready: Vec<MessageEvent> = Vec::new();
        for w in wanted {
            let verdict = if hops > config.max_hops {
                // Two bots answering each other: neither is at fault, the chain ends.
                metrics::counter!("chorus_automation_chain_stopped_total").increment(1);
                tracing::debug!(owner = %w.owner, conversation = %w.conversation, hops, "automation chain stopped");
                Err(NotSent::ChainEnds)
            } else {
                match self.members(&w).await? {
                    Err(why) => Err(why),
                    Ok(_) if ready.len() >= budget as usize => {
                        refused("budget");
                        Err(NotSent::OverBudget)
                    }
                    Ok(_) if self.ctx.limiter.check(w.owner).is_err() => {
                        refused("rate_limited");
                        Err(NotSent::RateLimited)
                    }
                    Ok(members) => {
                        ready.push(self.event(w, &members, hops));
                        Ok(())
                    }
                }
            };
            results.push(verdict);
        }
        if ready.is_empty() {
            return Ok(results);
        }
        let sent = ready.len() as u32;
        let parts = sent + u32::from(goes_on);
        let share = (budget - sent) / parts;
        if goes_on {
            trigger.budget = Some(budget - sent - share * sent);
        }
        for mut event in ready {
            event.budget = Some(share);
            metrics::counter!("chorus_automation_messages_total", "origin" => event.origin.as_str())
                .increment(1);
            self.out.push(Outgoing::new(
                self.ctx.topics.stage(event.route[0]),
                event.conversation_id.0.as_bytes().to_vec(),
                encode(&StageEvent::Message(event)),
            ));
        }
        Ok(results)
    }

    /// The members of `w`'s conversation, if `w` can be stored at all: a storable
    /// body, an owner who is a member.
    async fn members(&self, w: &Wanted) -> Result<Result<Arc<Members>, NotSent>, StageError> {
        let max = self.ctx.max_body_bytes;
        if check_body(&w.body, max).is_err() {
            return Ok(Err(NotSent::Invalid(format!(
                "not sent: a message is 1 to {max} bytes without NUL"
            ))));
        }
        let members = self.ctx.directory.members(w.conversation).await?;
        if !members.contains(w.owner) {
            return Ok(Err(NotSent::Invalid(format!(
                "not sent: you are not a member of conversation {}",
                w.conversation
            ))));
        }
        Ok(Ok(members))
    }

    /// The event of a message automation sends, `hops` steps from a person's message;
    /// its budget is set once every message of the batch is known.
    fn event(&self, w: Wanted, members: &Members, hops: u32) -> MessageEvent {
        MessageEvent {
            message_id: MessageId::derive(w.owner, w.conversation, &w.tag),
            client_msg_id: w.tag,
            conversation_id: w.conversation,
            sender_id: w.owner,
            session_id: None,
            body: w.body,
            // What a script sends is text: it cannot hand on another user's files.
            attachments: Vec::new(),
            reply_to: None,
            // Set by the store stage, from the body it stores.
            mentions: Vec::new(),
            kind: MessageKind::Text,
            target_id: None,
            emoji: None,
            remove: false,
            seq: None,
            sent_at: now_millis(),
            origin: w.origin,
            hops,
            route: self.ctx.engine.route_for(w.owner, members),
            suppress: Vec::new(),
            budget: None,
        }
    }
}

fn refused(reason: &'static str) {
    metrics::counter!("chorus_automation_refused_total", "reason" => reason).increment(1);
}

/// Now, at the millisecond precision the store keeps.
fn now_millis() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}
