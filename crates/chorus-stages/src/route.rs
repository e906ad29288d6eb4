//! `route`: turns stored messages and notices into one delivery event per gateway node
//! holding sessions of the recipients.

use crate::runner::{StageContext, StageError, StageWorker};
use async_trait::async_trait;
use chorus_core::event::{Delivery, StageEvent, encode};
use chorus_core::{NodeId, UserId};
use chorus_log::Outgoing;
use std::collections::HashMap;

/// The `route` stage.
#[derive(Default)]
pub struct RouteStage;

#[async_trait]
impl StageWorker for RouteStage {
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Outgoing>, StageError> {
        let mut out = Vec::new();
        for event in events {
            let (recipients, key, make): (
                Vec<UserId>,
                Vec<u8>,
                Box<dyn Fn(Vec<UserId>) -> Delivery + Send>,
            ) = match event {
                StageEvent::Message(m) => {
                    let Some(message) = m.to_message() else {
                        tracing::warn!(message_id = %m.message_id, "unstored message reached route; dropped");
                        continue;
                    };
                    let members = ctx.directory.members(m.conversation_id).await?;
                    // Members whose incoming scripts dropped it do not get it live; their
                    // sessions are told its `seq` so they do not fetch it to fill a gap.
                    let (withheld, recipients): (Vec<UserId>, Vec<UserId>) =
                        members.iter().partition(|u| m.suppress.contains(u));
                    if !withheld.is_empty() {
                        let (conversation_id, seq) = (message.conversation_id, message.seq);
                        let by_node = ctx.registry.locate(&withheld).await?;
                        for (node, recipients) in by_node {
                            out.push(Outgoing::new(
                                ctx.topics.deliver(&node),
                                conversation_id.0.as_bytes().to_vec(),
                                encode(&Delivery::Withheld {
                                    conversation_id,
                                    seq,
                                    recipients,
                                }),
                            ));
                        }
                    }
                    (
                        recipients,
                        m.conversation_id.0.as_bytes().to_vec(),
                        Box::new(move |recipients| Delivery::Message {
                            message: message.clone(),
                            recipients,
                        }),
                    )
                }
                StageEvent::Typing {
                    conversation_id,
                    user_id,
                    ..
                } => {
                    let members = ctx.directory.members(conversation_id).await?;
                    let recipients = members.iter().filter(|u| *u != user_id).collect();
                    (
                        recipients,
                        conversation_id.0.as_bytes().to_vec(),
                        Box::new(move |recipients| Delivery::Typing {
                            conversation_id,
                            user_id,
                            recipients,
                        }),
                    )
                }
                StageEvent::Read {
                    conversation_id,
                    user_id,
                    seq,
                    session_id,
                } => {
                    let members = ctx.directory.members(conversation_id).await?;
                    (
                        members.iter().collect(),
                        conversation_id.0.as_bytes().to_vec(),
                        Box::new(move |recipients| Delivery::Read {
                            conversation_id,
                            user_id,
                            seq,
                            recipients,
                            except_session: session_id,
                        }),
                    )
                }
                StageEvent::Presence { user_id, online } => {
                    let contacts = ctx
                        .directory
                        .store()
                        .contacts(user_id, ctx.presence_through_direct)
                        .await?;
                    (
                        contacts,
                        user_id.0.as_bytes().to_vec(),
                        Box::new(move |recipients| Delivery::Presence {
                            user_id,
                            online,
                            recipients,
                        }),
                    )
                }
            };
            let by_node: HashMap<NodeId, Vec<UserId>> = ctx.registry.locate(&recipients).await?;
            for (node, users) in by_node {
                metrics::counter!("chorus_route_deliveries_total").increment(1);
                out.push(Outgoing::new(
                    ctx.topics.deliver(&node),
                    key.clone(),
                    encode(&make(users)),
                ));
            }
        }
        Ok(out)
    }
}
