//! `automate-out`: runs the sender's enabled outgoing scripts on each message and each
//! change to one (edit, delete, reaction), in the order they were created. A script may rewrite the body (the next script sees the
//! new one), drop the message (the sending session gets `blocked`), reply, or forward.
//! A failing script leaves the message as it was, unless its owner made it
//! fail-closed, which blocks the message.

use crate::runner::{Output, StageContext, StageError, StageWorker, forward};
use crate::scripts::{Asked, Names, RunBook, Sends, tell_sender};
use async_trait::async_trait;
use chorus_automation::{Action, RunResult, parse_actions};
use chorus_core::ErrorCode;
use chorus_core::body::check_message_body;
use chorus_core::event::{MessageEvent, StageEvent};
use chorus_core::model::{Hook, Script};
use chorus_core::topics::Stage;
use std::sync::Arc;

/// The `automate-out` stage.
#[derive(Default)]
pub struct AutomateOut {
    names: Names,
}

/// An event of the batch: a message its sender's scripts run on, or anything else.
enum Slot {
    /// A message on this stage's turn on its routing slip.
    Scripted(InFlight),
    /// Passes through untouched.
    Passing(StageEvent),
}

/// A message on its way through its sender's scripts.
struct InFlight {
    m: MessageEvent,
    scripts: Vec<Arc<Script>>,
    /// Why it was blocked, once it is.
    blocked: Option<String>,
    /// Replies and forwards to send once every script has run, with the script that
    /// asked for each.
    sends: Vec<(Arc<Script>, Action)>,
}

#[async_trait]
impl StageWorker for AutomateOut {
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Output>, StageError> {
        let mut slots = slots(ctx, events);
        let mut book = RunBook::default();
        self.run_scripts(ctx, &mut slots, &mut book).await?;
        let mut out = Vec::new();
        let mut sends = Sends::new(ctx);
        for slot in slots {
            match slot {
                Slot::Passing(event) => out.extend(forward(Stage::AutomateOut, event)),
                Slot::Scripted(f) => out.extend(settle(ctx, f, &mut sends, &mut book).await?),
            }
        }
        out.extend(sends.out.into_iter().map(Output::Record));
        out.extend(book.finish(ctx).await?.into_iter().map(Output::Record));
        Ok(out)
    }
}

/// The batch's events, each message with its sender's enabled outgoing scripts.
fn slots(ctx: &StageContext, events: Vec<StageEvent>) -> Vec<Slot> {
    let automations = ctx.directory.automations();
    events
        .into_iter()
        .map(|event| match event {
            StageEvent::Message(m) if m.route.first() == Some(&Stage::AutomateOut) => {
                let scripts = automations
                    .get(m.sender_id)
                    .map(|a| a.on(Hook::Outgoing).cloned().collect())
                    .unwrap_or_default();
                Slot::Scripted(InFlight {
                    m,
                    scripts,
                    blocked: None,
                    sends: Vec::new(),
                })
            }
            other => Slot::Passing(other),
        })
        .collect()
}

impl AutomateOut {
    /// Runs the scripts level by level: every message's first script in one batch,
    /// then every message's second script on the (possibly rewritten) body, and so on.
    async fn run_scripts(
        &mut self,
        ctx: &StageContext,
        slots: &mut [Slot],
        book: &mut RunBook,
    ) -> Result<(), StageError> {
        for level in 0.. {
            let mut calls = Vec::new();
            let mut who = Vec::new();
            for (i, slot) in slots.iter().enumerate() {
                let Slot::Scripted(f) = slot else { continue };
                if f.blocked.is_some() {
                    continue;
                }
                let Some(script) = f.scripts.get(level) else {
                    continue;
                };
                let input = self.names.input(ctx, &f.m).await?;
                calls.push(ctx.engine.call(script, Hook::Outgoing, &input));
                who.push((i, script.clone()));
            }
            if calls.is_empty() {
                break;
            }
            let results = ctx.engine.run(calls).await;
            for ((i, script), result) in who.into_iter().zip(results) {
                if let Slot::Scripted(f) = &mut slots[i] {
                    f.apply(&script, result, book);
                }
            }
        }
        Ok(())
    }
}

impl InFlight {
    /// Applies what `script` returned: a rewrite changes the body the next script
    /// sees, a drop blocks the message, replies and forwards wait for the end.
    fn apply(&mut self, script: &Arc<Script>, result: RunResult, book: &mut RunBook) {
        let failure = book.note(script, Hook::Outgoing, &result);
        let actions = match (result, failure) {
            (Ok(outcome), None) => match parse_actions(Hook::Outgoing, outcome.value) {
                Ok(actions) => actions,
                Err(e) => {
                    let error = book.bad_action(script, Hook::Outgoing, e);
                    self.fail(script, &error.message);
                    return;
                }
            },
            (_, Some(error)) => {
                self.fail(script, &format!("{}: {}", error.code, error.message));
                return;
            }
            (Err(_), None) => return,
        };
        for action in actions {
            match action {
                // A delete or a reaction has no body to rewrite.
                Action::Rewrite(body) if self.m.kind.has_body() => self.m.body = body,
                Action::Rewrite(_) => {}
                Action::Drop(reason) => {
                    self.blocked = Some(reason);
                    return;
                }
                other => self.sends.push((script.clone(), other)),
            }
        }
    }

    /// A failed script: the message goes on, unless the script is fail-closed.
    fn fail(&mut self, script: &Script, why: &str) {
        if script.fail_closed {
            self.blocked = Some(format!(
                "your script \"{}\" failed and is fail-closed ({why})",
                script.name
            ));
        }
    }
}

/// What becomes of a message once its scripts have run: blocked, or made unstorable
/// by a rewrite (either way its session is told and nothing is stored), or sent on
/// after the replies and forwards its scripts asked for.
async fn settle(
    ctx: &StageContext,
    mut f: InFlight,
    sends: &mut Sends<'_>,
    book: &mut RunBook,
) -> Result<Vec<Output>, StageError> {
    if let Some(reason) = f.blocked.take() {
        metrics::counter!("chorus_messages_blocked_total").increment(1);
        return reject(ctx, &f.m, reason).await;
    }
    if f.m.kind.has_body()
        && check_message_body(&f.m.body, f.m.attachments.len(), ctx.max_body_bytes).is_err()
    {
        let reason = format!(
            "a script rewrote the message to something that cannot be stored (1 to {} bytes without NUL)",
            ctx.max_body_bytes
        );
        return reject(ctx, &f.m, reason).await;
    }
    let mut asked = Asked::default();
    asked.script_sends(f.m.sender_id, &f.m, &f.sends);
    // The message itself goes on to the recipients' automation: it keeps a share.
    sends
        .send_all(&mut f.m, asked, true, book, Hook::Outgoing)
        .await?;
    Ok(forward(Stage::AutomateOut, StageEvent::Message(f.m))
        .into_iter()
        .collect())
}

/// Tells the sending session its message was blocked (a message sent over HTTP has no
/// session: the block shows only in the script's status and metrics).
async fn reject(
    ctx: &StageContext,
    m: &MessageEvent,
    reason: String,
) -> Result<Vec<Output>, StageError> {
    tell_sender(ctx, m, ErrorCode::Blocked, reason).await
}
