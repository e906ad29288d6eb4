//! `route`: turns stored messages and notices into one delivery event per gateway node
//! holding sessions of the recipients.

use crate::runner::{Output, StageContext, StageError, StageWorker};
use crate::scripts::to_nodes;
use async_trait::async_trait;
use chorus_core::UserId;
use chorus_core::event::{Delivery, MessageEvent, StageEvent, encode};
use chorus_log::Outgoing;

/// The `route` stage.
#[derive(Default)]
pub struct RouteStage;

#[async_trait]
impl StageWorker for RouteStage {
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Output>, StageError> {
        let mut out = Vec::new();
        for event in events {
            let Some(recipients) = recipients(ctx, &event, &mut out).await? else {
                continue;
            };
            let key = event.key();
            let located = ctx.registry.locate(&recipients).await?;
            if let StageEvent::Message(m) = &event {
                for user in &m.mentions {
                    if !located.iter().any(|(_, users)| users.contains(user)) {
                        mentioned_offline(*user, m);
                    }
                }
            }
            for (node, users) in located {
                if let Some(delivery) = event.delivery(users) {
                    metrics::counter!("chorus_route_deliveries_total").increment(1);
                    out.push(Outgoing::new(
                        ctx.topics.deliver(&node),
                        key.clone(),
                        encode(&delivery),
                    ));
                }
            }
        }
        Ok(out.into_iter().map(Output::Record).collect())
    }
}

/// A member was mentioned while no session of theirs is open: the place where a push
/// notification (to a phone, by e-mail) will be sent from. Today it is counted.
fn mentioned_offline(user: UserId, message: &MessageEvent) {
    metrics::counter!("chorus_mentions_offline_total").increment(1);
    tracing::debug!(%user, message_id = %message.message_id, "mentioned while offline");
}

/// Who gets `event` live: the conversation's members (but a typing notice's typist),
/// or a user's contacts for presence. `None` for a message that was never stored.
async fn recipients(
    ctx: &StageContext,
    event: &StageEvent,
    out: &mut Vec<Outgoing>,
) -> Result<Option<Vec<UserId>>, StageError> {
    Ok(Some(match event {
        StageEvent::Message(m) if m.seq.is_none() => {
            tracing::warn!(message_id = %m.message_id, "unstored message reached route; dropped");
            return Ok(None);
        }
        StageEvent::Message(m) => unless_withheld(ctx, m, out).await?,
        StageEvent::Typing {
            conversation_id,
            user_id,
            ..
        } => {
            let members = ctx.directory.members(*conversation_id).await?;
            members.iter().filter(|u| u != user_id).collect()
        }
        StageEvent::Read {
            conversation_id, ..
        } => ctx
            .directory
            .members(*conversation_id)
            .await?
            .iter()
            .collect(),
        StageEvent::Presence { user_id, .. } => {
            ctx.directory
                .store()
                .contacts(*user_id, ctx.presence_through_direct)
                .await?
        }
    }))
}

/// The members of a stored message's conversation who get it live. Those whose
/// incoming scripts dropped it do not; their sessions are told its `seq` (in `out`) so
/// that they do not fetch it to fill a gap.
async fn unless_withheld(
    ctx: &StageContext,
    m: &MessageEvent,
    out: &mut Vec<Outgoing>,
) -> Result<Vec<UserId>, StageError> {
    let members = ctx.directory.members(m.conversation_id).await?;
    let (withheld, recipients): (Vec<UserId>, Vec<UserId>) =
        members.iter().partition(|u| m.suppress.contains(u));
    if !withheld.is_empty()
        && let Some(seq) = m.seq
    {
        let conversation_id = m.conversation_id;
        let key = conversation_id.0.as_bytes();
        out.extend(
            to_nodes(ctx, &withheld, key, |recipients| Delivery::Withheld {
                conversation_id,
                seq,
                recipients,
            })
            .await?,
        );
    }
    Ok(recipients)
}
