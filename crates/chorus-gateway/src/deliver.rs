//! The gateway's delivery consumer: reads this node's delivery topic and hands each
//! event to the local sessions of its recipients.

use crate::sessions::{Out, Outbound};
use crate::state::AppState;
use chorus_core::event::{Delivery, decode};
use chorus_core::wire::ServerFrame;
use chorus_log::consume::payload;
use chorus_log::{LogError, Subscription, consume, each};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Records fetched per batch.
const BATCH: usize = 1024;

/// Creates this node's delivery topic and consumes it until `shutdown`.
pub async fn run(state: Arc<AppState>, shutdown: CancellationToken) -> Result<(), LogError> {
    let topic = state.topics.deliver(&state.node);
    state.log.create_topic(&topic, state.partitions).await?;
    let sub = Subscription {
        name: "gateway",
        group: format!("{topic}.gateway"),
        topics: vec![topic],
        batch: BATCH,
        dead_letter: Some(state.topics.dead_letter()),
    };
    let log = state.log.clone();
    let deliver = each(move |delivery| {
        fan_out(&state, delivery);
        std::future::ready(Ok::<_, LogError>(Vec::new()))
    });
    consume(log, sub, payload(decode), deliver, shutdown.cancelled()).await
}

fn fan_out(state: &AppState, delivery: Delivery) {
    let (recipients, out, except) = match delivery {
        Delivery::Message {
            message,
            recipients,
        } => {
            tracing::debug!(message_id = %message.message_id, conversation_id = %message.conversation_id, seq = message.seq, recipients = recipients.len(), "message delivered to local sessions");
            let out = Outbound::new(Out::Message {
                conversation_id: message.conversation_id,
                seq: message.seq,
                frame: ServerFrame::Message { message }.to_json().into(),
            });
            (recipients, out, None)
        }
        Delivery::Withheld {
            conversation_id,
            seq,
            recipients,
        } => {
            let out = Outbound::new(Out::Withheld {
                conversation_id,
                seq,
            });
            (recipients, out, None)
        }
        Delivery::Typing {
            conversation_id,
            user_id,
            recipients,
        } => {
            let frame = ServerFrame::Typing {
                conversation_id,
                user_id,
            };
            (recipients, Outbound::frame(frame.to_json().into()), None)
        }
        Delivery::Read {
            conversation_id,
            user_id,
            seq,
            recipients,
            except_session,
        } => {
            let frame = ServerFrame::Read {
                conversation_id,
                user_id,
                seq,
            };
            (
                recipients,
                Outbound::frame(frame.to_json().into()),
                Some(except_session),
            )
        }
        Delivery::Presence {
            user_id,
            online,
            recipients,
        } => {
            let frame = ServerFrame::Presence { user_id, online };
            (recipients, Outbound::frame(frame.to_json().into()), None)
        }
        Delivery::Job { job, recipients } => {
            let frame = ServerFrame::Job { job };
            (recipients, Outbound::frame(frame.to_json().into()), None)
        }
        Delivery::Notice {
            kind,
            message,
            script_id,
            recipients,
        } => {
            let frame = ServerFrame::Notice {
                kind,
                message,
                script_id,
            };
            (recipients, Outbound::frame(frame.to_json().into()), None)
        }
        Delivery::Rejected {
            user_id,
            session_id,
            client_msg_id,
            code,
            message,
        } => {
            let frame = ServerFrame::Error {
                code,
                message,
                client_msg_id: Some(client_msg_id),
                retry_after_ms: None,
            };
            let out = Outbound::frame(frame.to_json().into());
            if state.sessions.deliver_to_session(user_id, session_id, &out) {
                metrics::counter!("chorus_gateway_frames_delivered_total").increment(1);
            }
            return;
        }
    };
    let n = state.sessions.deliver(&recipients, &out, except);
    metrics::counter!("chorus_gateway_frames_delivered_total").increment(n as u64);
}

/// Heartbeat period; well within the shared registry's node expiry (10 s).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(3);

/// Keeps this node's sessions alive in the registry and removes those of nodes that
/// stopped heartbeating, telling their users' contacts they are offline.
///
/// If this node itself missed heartbeats for longer than the expiry (a long pause, a
/// registry outage), others may have reaped its sessions: it registers them again.
pub async fn keep_registry(
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<(), LogError> {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(e) = state.registry.heartbeat(&state.node).await {
            tracing::warn!(error = %e, "registry heartbeat failed");
            continue;
        }
        if last_ok.elapsed() > HEARTBEAT * 3 {
            let sessions = state.sessions.all();
            tracing::warn!(
                sessions = sessions.len(),
                "heartbeats were missed; registering sessions again"
            );
            for (user, session) in sessions {
                if let Err(e) = state.registry.register(user, &state.node, session).await {
                    tracing::warn!(error = %e, "session not registered again");
                }
            }
        }
        last_ok = tokio::time::Instant::now();
        match state.registry.reap().await {
            Ok(users) => {
                for user_id in users {
                    let event = chorus_core::event::StageEvent::Presence {
                        user_id,
                        online: false,
                    };
                    if let Err(e) =
                        crate::send::notify_route(&state, user_id.0.as_bytes(), &event).await
                    {
                        tracing::warn!(%user_id, error = ?e, "offline presence not published");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "registry reaping failed"),
        }
    }
}
