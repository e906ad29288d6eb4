//! `automate-in`: for each stored message, runs every other member's enabled incoming
//! scripts and their auto-reply. A script may drop the message for its owner (not
//! delivered to them live), reply or forward as its owner. An auto-reply answers only
//! messages people typed, at most once per sender and conversation per window.
//! Failures are fail-open: the message is delivered as it was.

use crate::runner::{Output, StageContext, StageError, StageWorker, forward};
use crate::scripts::{Asked, Names, RunBook, Sends};
use async_trait::async_trait;
use chorus_automation::{Action, parse_actions};
use chorus_core::UserId;
use chorus_core::event::{MessageEvent, StageEvent};
use chorus_core::model::{Hook, Origin, Script};
use chorus_core::topics::Stage;
use std::sync::Arc;

/// The `automate-in` stage.
#[derive(Default)]
pub struct AutomateIn {
    names: Names,
}

/// One recipient's automation on one message.
struct Owner {
    event: usize,
    user: UserId,
    auto_reply: Option<String>,
    dropped: bool,
    sends: Vec<(Arc<Script>, Action)>,
}

#[async_trait]
impl StageWorker for AutomateIn {
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Output>, StageError> {
        let automations = ctx.directory.automations();
        let mut events: Vec<StageEvent> = events;
        let mut owners: Vec<Owner> = Vec::new();
        let mut calls = Vec::new();
        let mut who: Vec<(usize, Arc<Script>)> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let StageEvent::Message(m) = event else {
                continue;
            };
            // Incoming scripts and auto-replies answer messages, not changes to them.
            if m.route.first() != Some(&Stage::AutomateIn) || m.seq.is_none() || !m.kind.is_text() {
                continue;
            }
            let members = ctx.directory.members(m.conversation_id).await?;
            let mut input = None;
            for user in members.iter().filter(|u| *u != m.sender_id) {
                let Some(automation) = automations.get(user) else {
                    continue;
                };
                let owner = owners.len();
                for script in automation.on(Hook::Incoming) {
                    if input.is_none() {
                        input = Some(self.names.input(ctx, m).await?);
                    }
                    if let Some(input) = &input {
                        calls.push(ctx.engine.call(script, Hook::Incoming, input));
                        who.push((owner, script.clone()));
                    }
                }
                owners.push(Owner {
                    event: i,
                    user,
                    auto_reply: automation.auto_reply.clone(),
                    dropped: false,
                    sends: Vec::new(),
                });
            }
        }
        let mut book = RunBook::default();
        if !calls.is_empty() {
            let results = ctx.engine.run(calls).await;
            for ((owner, script), result) in who.into_iter().zip(results) {
                let o = &mut owners[owner];
                let failure = book.note(&script, Hook::Incoming, &result);
                let (Ok(outcome), None) = (result, failure) else {
                    continue;
                };
                let actions = match parse_actions(Hook::Incoming, outcome.value) {
                    Ok(actions) => actions,
                    Err(e) => {
                        book.bad_action(&script, Hook::Incoming, e);
                        continue;
                    }
                };
                for action in actions {
                    match action {
                        Action::Drop(_) => o.dropped = true,
                        other => o.sends.push((script.clone(), other)),
                    }
                }
            }
        }
        let mut sends = Sends::new(ctx);
        for group in owners.chunk_by(|a, b| a.event == b.event) {
            let StageEvent::Message(m) = &mut events[group[0].event] else {
                continue;
            };
            for o in group.iter().filter(|o| o.dropped) {
                metrics::counter!("chorus_messages_dropped_for_recipient_total").increment(1);
                m.suppress.push(o.user);
            }
            let mut asked = Asked::default();
            for o in group {
                asked.script_sends(o.user, m, &o.sends);
                if let Some(text) = &o.auto_reply
                    && claim_auto_reply(ctx, o.user, m).await?
                {
                    asked.auto_reply(o.user, m, text.clone());
                }
            }
            sends
                .send_all(m, asked, false, &mut book, Hook::Incoming)
                .await?;
        }
        let mut out: Vec<Output> = events
            .into_iter()
            .filter_map(|e| forward(Stage::AutomateIn, e))
            .collect();
        out.extend(sends.out.into_iter().map(Output::Record));
        out.extend(book.finish(ctx).await?.into_iter().map(Output::Record));
        Ok(out)
    }
}

/// Whether `owner`'s auto-reply answers `m`: not when it came from automation, the
/// owner dropped it, or the owner answered this sender here within the window (a
/// claim, recorded in the store).
async fn claim_auto_reply(
    ctx: &StageContext,
    owner: UserId,
    m: &MessageEvent,
) -> Result<bool, StageError> {
    if m.origin != Origin::User || m.suppress.contains(&owner) {
        return Ok(false);
    }
    Ok(ctx
        .directory
        .store()
        .claim_auto_reply(
            owner,
            m.conversation_id,
            m.sender_id,
            m.message_id,
            chrono::Utc::now(),
            ctx.engine.auto_reply_window(),
        )
        .await?)
}
