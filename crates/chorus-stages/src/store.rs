//! `store`: assigns each message its conversation's next `seq` and persists it, a
//! whole batch in one transaction. A message stored before (a retried send, or a
//! batch replayed after a crash) is not stored again: its stored copy, with its
//! original `seq`, goes on, so that delivery after a crash still happens.

use crate::runner::{Output, StageContext, StageError, StageWorker, forward};
use crate::scripts::tell_sender;
use async_trait::async_trait;
use chorus_core::ErrorCode;
use chorus_core::event::{MessageEvent, StageEvent};
use chorus_core::mentions::named;
use chorus_core::topics::Stage;
use chorus_store::{Appended, NewMessage};

/// The `store` stage.
pub struct StoreStage;

#[async_trait]
impl StageWorker for StoreStage {
    async fn process(
        &mut self,
        ctx: &StageContext,
        mut events: Vec<StageEvent>,
    ) -> Result<Vec<Output>, StageError> {
        mention(ctx, &mut events).await?;
        let batch: Vec<NewMessage> = events
            .iter()
            .filter_map(|e| match e {
                StageEvent::Message(m) => Some(new_message(m)),
                _ => None,
            })
            .collect();
        let mut appended = ctx
            .directory
            .store()
            .append_messages(&batch)
            .await?
            .into_iter();
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let StageEvent::Message(mut m) = event else {
                out.extend(forward(Stage::Store, event));
                continue;
            };
            match appended.next() {
                Some(Appended::New(stored)) => {
                    metrics::counter!("chorus_messages_stored_total").increment(1);
                    m.seq = Some(stored.seq);
                }
                Some(Appended::Existing(stored)) => {
                    // Forward exactly what is stored: a retry's text may differ.
                    metrics::counter!("chorus_messages_duplicate_total").increment(1);
                    m.adopt(stored);
                }
                Some(Appended::Unchanged) => {
                    // A reaction there already (or gone already) by the time it is
                    // stored: as accepted, it adds nothing.
                    metrics::counter!("chorus_changes_unchanged_total").increment(1);
                    continue;
                }
                Some(Appended::TargetGone) => {
                    // Its message was deleted after the gateway checked it: the sending
                    // session learns it as it would have then.
                    metrics::counter!("chorus_changes_unchanged_total").increment(1);
                    let gone = format!(
                        "message {} was deleted",
                        m.target_id.map(|t| t.to_string()).unwrap_or_default()
                    );
                    out.extend(tell_sender(ctx, &m, ErrorCode::NotFound, gone).await?);
                    continue;
                }
                Some(Appended::NoConversation) | None => {
                    tracing::warn!(
                        conversation_id = %m.conversation_id,
                        message_id = %m.message_id,
                        "message for a conversation that does not exist dropped"
                    );
                    continue;
                }
            }
            out.extend(forward(Stage::Store, StageEvent::Message(m)));
        }
        Ok(out)
    }
}

fn new_message(m: &MessageEvent) -> NewMessage {
    NewMessage {
        message_id: m.message_id,
        client_msg_id: m.client_msg_id.clone(),
        conversation_id: m.conversation_id,
        sender_id: m.sender_id,
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
    }
}

/// Sets each message's mentions: the members of its conversation that its body names
/// as `@username`, in order of first appearance, each once. Here rather than at the
/// gateway, so that what scripts send and rewrite is counted by the body stored. One
/// lookup of the names a batch holds, none for a batch without `@` names.
async fn mention(ctx: &StageContext, events: &mut [StageEvent]) -> Result<(), StageError> {
    let mut names: Vec<String> = Vec::new();
    for event in events.iter() {
        if let StageEvent::Message(m) = event {
            for name in named(&m.body) {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let users = ctx.directory.store().users_named(&names).await?;
    for event in events.iter_mut() {
        let StageEvent::Message(m) = event else {
            continue;
        };
        let names = named(&m.body);
        if names.is_empty() {
            continue;
        }
        let mut mentions = Vec::new();
        let members = ctx.directory.members(m.conversation_id).await?;
        for name in names {
            if let Some(user) = users.iter().find(|u| u.username == name)
                && members.contains(user.id)
                && !mentions.contains(&user.id)
            {
                mentions.push(user.id);
            }
        }
        m.mentions = mentions;
    }
    Ok(())
}
