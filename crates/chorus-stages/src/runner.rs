//! What every stage shares: its context, its worker's contract, and the consumer loop
//! it runs in (chorus-log's [`ConsumerLoop`], with a stage's metrics and tolerance for
//! delivery topics that went away).

use async_trait::async_trait;
use chorus_core::UserId;
use chorus_core::event::{StageEvent, decode, encode};
use chorus_core::ratelimit::RateLimiter;
use chorus_core::topics::{Stage, Topics};
use chorus_log::consume::Decoder;
use chorus_log::{
    ConsumerLoop, EventLog, Handler, HandlerError, LogError, Outgoing, Record, Subscription,
};
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
    worker: Box<dyn StageWorker>,
    ctx: StageContext,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    let sub = Subscription {
        name: stage.name(),
        group: group(&ctx.topics, stage),
        topics: vec![ctx.topics.stage(stage)],
        batch: BATCH,
        dead_letter: Some(ctx.topics.dead_letter()),
    };
    let log = ctx.log.clone();
    let handler = StageHandler { stage, worker, ctx };
    let consumer = ConsumerLoop::subscribe(log, sub, decoder(stage), handler).await?;
    tracing::info!(stage = stage.name(), "stage started");
    consumer.run(shutdown.cancelled()).await?;
    tracing::info!(stage = stage.name(), "stage stopped");
    Ok(())
}

impl HandlerError for StageError {
    /// Only the store may refuse an event for good; the log and the registry fail
    /// when they are down.
    fn is_poison(&self) -> bool {
        match self {
            Self::Log(_) | Self::Registry(_) => false,
            Self::Store(e) => !e.is_unavailable(),
        }
    }
}

/// Reads a stage's events.
fn decoder(stage: Stage) -> Decoder<StageEvent> {
    Box::new(move |record: &Record| {
        let event = decode::<StageEvent>(&record.payload)?;
        // The message id is the same in every stage (derived at the gateway):
        // `CHORUS_LOG=info,chorus_stages=debug` and a filter on it follow one message
        // through the spine.
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
        Ok(event)
    })
}

/// A stage's worker as the handler of its consumer loop.
struct StageHandler {
    stage: Stage,
    worker: Box<dyn StageWorker>,
    ctx: StageContext,
}

#[async_trait]
impl Handler for StageHandler {
    type Event = StageEvent;
    type Error = StageError;

    async fn handle(&mut self, events: Vec<StageEvent>) -> Result<Vec<Outgoing>, StageError> {
        self.worker.process(&self.ctx, events).await
    }

    /// A record for a topic that does not exist (the delivery topic of a node that has
    /// left while the registry still listed it) is dropped with a warning: its
    /// recipients' sessions are gone, and they resume with `sync`.
    async fn publish(
        &mut self,
        log: &dyn EventLog,
        mut out: Vec<Outgoing>,
    ) -> Result<(), LogError> {
        while !out.is_empty() {
            match log.publish(out.clone()).await {
                Err(LogError::UnknownTopic(topic)) if topic != self.ctx.topics.dead_letter() => {
                    tracing::warn!(%topic, "records for a missing topic dropped");
                    out.retain(|r| r.topic != topic);
                }
                other => return other,
            }
        }
        Ok(())
    }

    fn committed(&mut self, handled: usize, started: Instant) {
        let stage = self.stage.name();
        metrics::counter!("chorus_stage_events_total", "stage" => stage).increment(handled as u64);
        metrics::histogram!("chorus_stage_batch_seconds", "stage" => stage)
            .record(started.elapsed().as_secs_f64());
    }
}

/// Pops `stage` off a message's routing slip and addresses it to the next stage, if any.
pub fn forward(ctx: &StageContext, stage: Stage, event: StageEvent) -> Option<Outgoing> {
    let StageEvent::Message(mut m) = event else {
        // Notices (typing, read, presence) go straight to the route stage.
        return Some(Outgoing::new(
            ctx.topics.stage(Stage::Route),
            event.key(),
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
            let bodies = events.into_iter().filter_map(|e| match e {
                StageEvent::Message(m) => Some(m.body),
                _ => None,
            });
            bodies
                .map(|body| match body.as_str() {
                    "poison" => Err(StoreError::Corrupt("cannot store this".into()).into()),
                    _ => Ok(Outgoing::new("out", body.clone(), body)),
                })
                .collect()
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

    /// A stage's context over `log`, with a store in `dir`.
    async fn context(dir: &std::path::Path, log: &MemoryLog, topics: Topics) -> StageContext {
        let store = chorus_store::sqlite::SqliteStore::open(&dir.join("t.db"))
            .await
            .unwrap();
        let directory = Directory::new(Arc::new(store));
        StageContext {
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
        }
    }

    #[tokio::test]
    async fn a_poison_event_goes_to_the_dead_letter_topic_and_the_rest_goes_on() {
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
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), &log, topics).await;
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
