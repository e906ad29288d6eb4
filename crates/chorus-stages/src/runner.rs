//! The loop every stage shares: fetch a batch, decode, process, publish, commit.

use async_trait::async_trait;
use chorus_core::UserId;
use chorus_core::event::{StageEvent, decode, encode};
use chorus_core::ratelimit::RateLimiter;
use chorus_core::topics::{Stage, Topics};
use chorus_log::{EventLog, LogError, Outgoing, Record};
use chorus_registry::{Registry, RegistryError};
use chorus_store::{Directory, StoreError};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Records a stage takes per batch.
pub const BATCH: usize = 512;

/// What a stage needs from the world.
#[derive(Clone)]
pub struct StageContext {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// The store with its membership cache.
    pub directory: Directory,
    /// Session locations.
    pub registry: Arc<dyn Registry>,
    /// Topic names.
    pub topics: Topics,
    /// Users' scripts.
    pub engine: chorus_automation::Engine,
    /// Largest message body, bytes (for what automation sends).
    pub max_body_bytes: usize,
    /// Send rate limits, per user: what users' scripts send counts against their
    /// owners' rate (the gateway of the same process shares it).
    pub limiter: Arc<RateLimiter<UserId>>,
    /// Whether direct conversations make contacts (`presence.through_direct`).
    pub presence_through_direct: bool,
}

/// Why a stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl StageError {
    /// Whether retrying later may succeed (a dependency is down), as opposed to an
    /// event that can never be processed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Log(_) | Self::Registry(_) => true,
            Self::Store(e) => e.is_unavailable(),
        }
    }
}

/// One stage's work on a batch of decoded events.
#[async_trait]
pub trait StageWorker: Send {
    /// Processes events (in log order) and returns the records to publish. Must be
    /// idempotent: after a crash the same batch comes again.
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Outgoing>, StageError>;
}

/// The consumer group of a stage.
pub fn group(topics: &Topics, stage: Stage) -> String {
    format!("{}.group", topics.stage(stage))
}

/// Runs `stage` until `shutdown`, finishing the batch in hand first.
pub async fn run_stage(
    stage: Stage,
    ctx: StageContext,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    let worker: Box<dyn StageWorker> = match stage {
        Stage::AutomateOut => Box::<crate::automate_out::AutomateOut>::default(),
        Stage::Store => Box::new(crate::store::StoreStage),
        Stage::AutomateIn => Box::<crate::automate_in::AutomateIn>::default(),
        Stage::Route => Box::new(crate::route::RouteStage),
    };
    run_worker(stage, worker, ctx, shutdown).await
}

/// The consumer loop of `stage` around any worker.
async fn run_worker(
    stage: Stage,
    mut worker: Box<dyn StageWorker>,
    ctx: StageContext,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    let topic = ctx.topics.stage(stage);
    let group_name = group(&ctx.topics, stage);
    let mut consumer = ctx.log.subscribe(&group_name, &[topic]).await?;
    tracing::info!(stage = stage.name(), "stage started");
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = consumer.next_batch(BATCH) => batch?,
        };
        let started = Instant::now();
        let mut readable = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for record in &batch {
            match decode::<StageEvent>(&record.payload) {
                Ok(event) => {
                    // The message id is the same in every stage (derived at the
                    // gateway): `CHORUS_LOG=info,chorus_stages=debug` and a filter on it
                    // follow one message through the spine.
                    if let StageEvent::Message(m) = &event {
                        tracing::debug!(
                            stage = stage.name(),
                            message_id = %m.message_id,
                            conversation_id = %m.conversation_id,
                            seq = m.seq,
                            partition = record.partition,
                            offset = record.offset,
                            "message in stage"
                        );
                    }
                    readable.push((record, event));
                }
                Err(e) => dead.push(dead_letter(&ctx, stage, record, &e)),
            }
        }
        let n = readable.len();
        let events = readable.iter().map(|(_, e)| e.clone()).collect();
        let mut out = match worker.process(&ctx, events).await {
            Ok(out) => out,
            Err(e) if e.is_transient() => return Err(e),
            // Something in the batch cannot be processed, and retrying the batch would
            // fail the same way for ever: find it, set it aside, process the rest.
            Err(e) => {
                tracing::warn!(stage = stage.name(), error = %e, "batch failed; retrying its events one by one");
                let mut out = Vec::new();
                for (record, event) in readable {
                    match worker.process(&ctx, vec![event]).await {
                        Ok(more) => out.extend(more),
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => dead.push(dead_letter(&ctx, stage, record, &e)),
                    }
                }
                out
            }
        };
        out.extend(dead);
        publish(&ctx, out).await?;
        consumer.commit(&batch).await?;
        metrics::counter!("chorus_stage_events_total", "stage" => stage.name()).increment(n as u64);
        metrics::histogram!("chorus_stage_batch_seconds", "stage" => stage.name())
            .record(started.elapsed().as_secs_f64());
        consumer.record_lag(&group_name);
    }
    tracing::info!(stage = stage.name(), "stage stopped");
    Ok(())
}

/// Publishes a stage's output. A record for a topic that does not exist (the delivery
/// topic of a node that has left while the registry still listed it) is dropped with a
/// warning: its recipients' sessions are gone, and they resume with `sync`.
async fn publish(ctx: &StageContext, mut out: Vec<Outgoing>) -> Result<(), LogError> {
    while !out.is_empty() {
        match ctx.log.publish(out.clone()).await {
            Err(LogError::UnknownTopic(topic)) if topic != ctx.topics.dead_letter() => {
                tracing::warn!(%topic, "records for a missing topic dropped");
                out.retain(|r| r.topic != topic);
            }
            other => return other,
        }
    }
    Ok(())
}

fn dead_letter(
    ctx: &StageContext,
    stage: Stage,
    record: &Record,
    e: &dyn std::fmt::Display,
) -> Outgoing {
    tracing::warn!(
        stage = stage.name(),
        topic = %record.topic,
        partition = record.partition,
        offset = record.offset,
        error = %e,
        "event that cannot be processed sent to the dead-letter topic"
    );
    metrics::counter!("chorus_dead_letter_total", "stage" => stage.name()).increment(1);
    Outgoing::new(
        ctx.topics.dead_letter(),
        record.key.clone(),
        record.payload.clone(),
    )
}

/// Pops `stage` off a message's routing slip and addresses it to the next stage, if any.
pub fn forward(ctx: &StageContext, stage: Stage, event: StageEvent) -> Option<Outgoing> {
    let StageEvent::Message(mut m) = event else {
        // Notices (typing, read, presence) go straight to the route stage.
        return Some(Outgoing::new(
            ctx.topics.stage(Stage::Route),
            notice_key(&event),
            encode(&event),
        ));
    };
    if m.route.first() == Some(&stage) {
        m.route.remove(0);
    }
    let next = *m.route.first()?;
    let key = m.conversation_id.0.as_bytes().to_vec();
    Some(Outgoing::new(
        ctx.topics.stage(next),
        key,
        encode(&StageEvent::Message(m)),
    ))
}

fn notice_key(event: &StageEvent) -> Vec<u8> {
    match event {
        StageEvent::Message(m) => m.conversation_id.0.as_bytes().to_vec(),
        StageEvent::Typing {
            conversation_id, ..
        }
        | StageEvent::Read {
            conversation_id, ..
        } => conversation_id.0.as_bytes().to_vec(),
        StageEvent::Presence { user_id, .. } => user_id.0.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::event::MessageEvent;
    use chorus_core::model::Origin;
    use chorus_core::{ConversationId, MessageId, UserId};
    use chorus_log::memory::MemoryLog;

    /// Forwards every message to `out`, except those whose body is "poison".
    struct Picky;

    #[async_trait]
    impl StageWorker for Picky {
        async fn process(
            &mut self,
            _ctx: &StageContext,
            events: Vec<StageEvent>,
        ) -> Result<Vec<Outgoing>, StageError> {
            let mut out = Vec::new();
            for e in events {
                let StageEvent::Message(m) = e else { continue };
                if m.body == "poison" {
                    return Err(StoreError::Corrupt("cannot store this".into()).into());
                }
                out.push(Outgoing::new(
                    "out",
                    m.body.clone().into_bytes(),
                    m.body.into_bytes(),
                ));
            }
            Ok(out)
        }
    }

    fn message(body: &str) -> Vec<u8> {
        let sender = UserId::new();
        let conversation = ConversationId::new();
        encode(&StageEvent::Message(MessageEvent {
            message_id: MessageId::derive(sender, conversation, body),
            client_msg_id: body.into(),
            conversation_id: conversation,
            sender_id: sender,
            session_id: None,
            body: body.into(),
            seq: None,
            sent_at: chrono::Utc::now(),
            origin: Origin::User,
            hops: 0,
            route: vec![Stage::Store],
            suppress: Vec::new(),
            budget: None,
        }))
    }

    #[tokio::test]
    async fn a_poison_event_goes_to_the_dead_letter_topic_and_the_rest_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = chorus_store::sqlite::SqliteStore::open(&dir.path().join("t.db"))
            .await
            .unwrap();
        let log = MemoryLog::new();
        let topics = Topics::new("t");
        let input = topics.stage(Stage::Store);
        for t in [input.as_str(), "out", &topics.dead_letter()] {
            log.create_topic(t, 1).await.unwrap();
        }
        let mut out = log.subscribe("check-out", &["out".into()]).await.unwrap();
        let mut dead = log
            .subscribe("check-dead", &[topics.dead_letter()])
            .await
            .unwrap();
        let records = ["first", "poison", "last"]
            .map(|b| Outgoing::new(input.clone(), b.as_bytes().to_vec(), message(b)));
        log.publish(records.to_vec()).await.unwrap();
        let directory = Directory::new(Arc::new(store));
        let ctx = StageContext {
            log: Arc::new(log.clone()),
            engine: chorus_automation::Engine::new(
                chorus_sandbox::Sandbox::new(Default::default()),
                chorus_sandbox::Sandbox::new(Default::default()),
                Default::default(),
                directory.clone(),
            ),
            directory,
            registry: Arc::new(chorus_registry::memory::MemoryRegistry::new()),
            topics,
            max_body_bytes: 1024,
            limiter: Arc::new(RateLimiter::new(100, 100)),
            presence_through_direct: true,
        };
        let stop = CancellationToken::new();
        let running = tokio::spawn(run_worker(Stage::Store, Box::new(Picky), ctx, stop.clone()));
        let mut forwarded = Vec::new();
        while forwarded.len() < 2 {
            forwarded.extend(out.next_batch(10).await.unwrap());
        }
        let bodies: Vec<&[u8]> = forwarded.iter().map(|r| r.payload.as_ref()).collect();
        assert_eq!(bodies, vec![b"first".as_slice(), b"last".as_slice()]);
        let set_aside = dead.next_batch(10).await.unwrap();
        assert_eq!(set_aside.len(), 1);
        match decode::<StageEvent>(&set_aside[0].payload).unwrap() {
            StageEvent::Message(m) => assert_eq!(m.body, "poison"),
            other => panic!("not the poison event: {other:?}"),
        }
        stop.cancel();
        running.await.unwrap().unwrap();
        assert_eq!(
            log.retained(&input),
            Some(0),
            "the whole batch was committed"
        );
    }
}
