//! `automate-out`: runs the sender's enabled outgoing scripts on each message, in the
//! order they were created. A script may rewrite the body (the next script sees the
//! new one), drop the message (the sending session gets `blocked`), reply, or forward.
//! A failing script leaves the message as it was, unless its owner made it
//! fail-closed, which blocks the message.

use crate::runner::{StageContext, StageError, StageWorker, forward};
use crate::scripts::{Names, RunBook, Sends, Wanted, to_nodes};
use async_trait::async_trait;
use chorus_automation::{Action, parse_actions};
use chorus_core::ErrorCode;
use chorus_core::event::{Delivery, MessageEvent, StageEvent};
use chorus_core::model::{Hook, Origin, Script};
use chorus_core::topics::Stage;
use chorus_log::Outgoing;
use std::sync::Arc;

/// The `automate-out` stage.
#[derive(Default)]
pub struct AutomateOut {
    names: Names,
}

/// A message on its way through its sender's scripts.
struct InFlight {
    m: MessageEvent,
    scripts: Vec<Arc<Script>>,
    /// Why it was blocked, once it is.
    blocked: Option<String>,
    /// Replies and forwards to send, after the scripts: (script, n, action).
    sends: Vec<(Arc<Script>, Action)>,
}

#[async_trait]
impl StageWorker for AutomateOut {
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Outgoing>, StageError> {
        let automations = ctx.directory.automations();
        let mut slots: Vec<Result<InFlight, StageEvent>> = Vec::with_capacity(events.len());
        for event in events {
            match event {
                StageEvent::Message(m) if m.route.first() == Some(&Stage::AutomateOut) => {
                    let scripts: Vec<Arc<Script>> = automations
                        .get(m.sender_id)
                        .map(|a| a.on(Hook::Outgoing).cloned().collect())
                        .unwrap_or_default();
                    slots.push(Ok(InFlight {
                        m,
                        scripts,
                        blocked: None,
                        sends: Vec::new(),
                    }));
                }
                other => slots.push(Err(other)),
            }
        }
        let mut book = RunBook::default();
        // Level by level: every message's first script in one batch, then every
        // message's second script on the (possibly rewritten) body, and so on.
        for level in 0.. {
            let mut calls = Vec::new();
            let mut who = Vec::new();
            for (i, slot) in slots.iter().enumerate() {
                let Ok(f) = slot else { continue };
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
                let Ok(f) = &mut slots[i] else { continue };
                let failure = book.note(&script, Hook::Outgoing, &result);
                let actions = match (result, failure) {
                    (Ok(outcome), None) => match parse_actions(Hook::Outgoing, outcome.value) {
                        Ok(actions) => actions,
                        Err(e) => {
                            let error = book.bad_action(&script, Hook::Outgoing, e);
                            fail(f, &script, &error.message);
                            continue;
                        }
                    },
                    (_, Some(error)) => {
                        fail(f, &script, &format!("{}: {}", error.code, error.message));
                        continue;
                    }
                    (Err(_), None) => continue,
                };
                for action in actions {
                    match action {
                        Action::Rewrite(body) => f.m.body = body,
                        Action::Drop(reason) => {
                            f.blocked = Some(reason);
                            break;
                        }
                        other => f.sends.push((script.clone(), other)),
                    }
                }
            }
        }
        let mut out = Vec::new();
        let mut sends = Sends::new(ctx);
        for slot in slots {
            let mut f = match slot {
                Ok(f) => f,
                Err(event) => {
                    out.extend(forward(ctx, Stage::AutomateOut, event));
                    continue;
                }
            };
            if let Some(reason) = f.blocked.take() {
                metrics::counter!("chorus_messages_blocked_total").increment(1);
                out.extend(reject(ctx, &f.m, reason).await?);
                continue;
            }
            if f.m.body.len() > ctx.max_body_bytes || f.m.body.contains('\0') {
                // A rewrite made it unstorable: the sender learns, nothing is stored.
                out.extend(
                    reject(
                        ctx,
                        &f.m,
                        format!(
                            "a script rewrote the message to something that cannot be stored (1 to {} bytes without NUL)",
                            ctx.max_body_bytes
                        ),
                    )
                    .await?,
                );
                continue;
            }
            let mut wanted = Vec::new();
            let mut by = Vec::new();
            for (n, (script, action)) in f.sends.iter().enumerate() {
                let (conversation, body) = match action {
                    Action::Reply(body) => (f.m.conversation_id, body.clone()),
                    Action::Forward(to) => (*to, f.m.body.clone()),
                    Action::Rewrite(_) | Action::Drop(_) => continue,
                };
                wanted.push(Wanted {
                    owner: f.m.sender_id,
                    conversation,
                    body,
                    origin: Origin::Script,
                    tag: format!("script:{}:{}:{n}", script.id, f.m.message_id),
                });
                by.push(Some(script.clone()));
            }
            // The message itself goes on to the recipients' automation: it keeps a share.
            let results = sends.send_all(&mut f.m, wanted, true).await?;
            book.sent(Hook::Outgoing, by, results);
            out.extend(forward(ctx, Stage::AutomateOut, StageEvent::Message(f.m)));
        }
        out.extend(sends.out);
        out.extend(book.finish(ctx).await?);
        Ok(out)
    }
}

/// A failed script: the message goes on, unless the script is fail-closed.
fn fail(f: &mut InFlight, script: &Script, why: &str) {
    if script.fail_closed {
        f.blocked = Some(format!(
            "your script \"{}\" failed and is fail-closed ({why})",
            script.name
        ));
    }
}

/// Tells the sending session its message was blocked (a message sent over HTTP has no
/// session: the block shows only in the script's status and metrics).
async fn reject(
    ctx: &StageContext,
    m: &MessageEvent,
    reason: String,
) -> Result<Vec<Outgoing>, StageError> {
    let Some(session_id) = m.session_id else {
        return Ok(Vec::new());
    };
    let delivery = Delivery::Rejected {
        user_id: m.sender_id,
        session_id,
        client_msg_id: m.client_msg_id.clone(),
        code: ErrorCode::Blocked,
        message: reason,
    };
    to_nodes(ctx, &[m.sender_id], m.conversation_id.0.as_bytes(), |_| {
        delivery.clone()
    })
    .await
}
