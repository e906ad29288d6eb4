//! What every stage shares: its context, its worker's contract, and the consumer loop
//! it runs in (chorus-log's [`ConsumerLoop`], with a stage's metrics and tolerance for
//! delivery topics that went away).
//!
//! A stage whose process also runs the route stage hands the events it forwards to
//! route itself, in the same batch, instead of through the route stage's topic (see
//! [`run_stage`]): a message no automation touches crosses the log twice (to the store
//! stage, then to its recipients' gateways), not three times.

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

/// What a stage's work on a batch produced.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "most outputs are messages for the next stage: boxing them would cost an \
              allocation each for the records' sake"
)]
pub enum Output {
    /// An event for the next stage on its message's routing slip (a notice: for the
    /// route stage). Published to that stage's topic, or handed to the stage in this
    /// process when it is chained to this one.
    Next(Stage, StageEvent),
    /// A record for any other topic (a delivery, a message sent by automation),
    /// published as it is.
    Record(Outgoing),
}

/// One stage's work on a batch of decoded events.
#[async_trait]
pub trait StageWorker: Send {
    /// Processes events (in log order) and returns what they produced. Must be
    /// idempotent: after a crash the same batch comes again.
    async fn process(
        &mut self,
        ctx: &StageContext,
        events: Vec<StageEvent>,
    ) -> Result<Vec<Output>, StageError>;
}

/// The worker of `stage`.
fn worker(stage: Stage) -> Box<dyn StageWorker> {
    match stage {
        Stage::AutomateOut => Box::<crate::automate_out::AutomateOut>::default(),
        Stage::Store => Box::new(crate::store::StoreStage),
        Stage::AutomateIn => Box::<crate::automate_in::AutomateIn>::default(),
        Stage::Route => Box::new(crate::route::RouteStage),
    }
}

/// The stage `stage` hands its output to directly when this process runs `local`:
/// the route stage, when it runs here too. Route only looks up recipients and
/// addresses deliveries, so it adds little to the batch of the stage before it, and it
/// keeps its guarantees there: it sees a message only after the store stage's
/// transaction committed, in the conversation's order, and if the process dies before
/// the deliveries are published, the earlier stage's batch (not committed yet) comes
/// again and is routed again. Automation stages are never chained: scripts would hold
/// up the batch of the stage before them.
pub fn chained(stage: Stage, local: &[Stage]) -> Option<Stage> {
    (stage != Stage::Route && local.contains(&Stage::Route)).then_some(Stage::Route)
}

/// The consumer group of a stage.
pub fn group(topics: &Topics, stage: Stage) -> String {
    format!("{}.group", topics.stage(stage))
}

/// Runs `stage` until `shutdown`, finishing the batch in hand first. `local` are the
/// stages this process runs: what `stage` forwards to a stage [`chained`] to it is
/// handled here, in the same batch, instead of being published to that stage's topic.
pub async fn run_stage(
    stage: Stage,
    local: Vec<Stage>,
    ctx: StageContext,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    let chained = chained(stage, &local).map(|next| (next, worker(next)));
    run_worker(stage, worker(stage), chained, ctx, shutdown).await
}

/// The consumer loop of `stage` around any worker, with the stage chained to it.
async fn run_worker(
    stage: Stage,
    worker: Box<dyn StageWorker>,
    chained: Option<(Stage, Box<dyn StageWorker>)>,
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
    let chained_to = chained.as_ref().map(|(next, _)| next.name());
    let handler = StageHandler {
        stage,
        worker,
        chained,
        ctx,
    };
    let consumer = ConsumerLoop::subscribe(log, sub, decoder(stage), handler).await?;
    tracing::info!(
        stage = stage.name(),
        chained = chained_to.unwrap_or("none"),
        "stage started"
    );
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

/// A stage's worker, and the one chained to it, as the handler of its consumer loop.
struct StageHandler {
    stage: Stage,
    worker: Box<dyn StageWorker>,
    chained: Option<(Stage, Box<dyn StageWorker>)>,
    ctx: StageContext,
}

#[async_trait]
impl Handler for StageHandler {
    type Event = StageEvent;
    type Error = StageError;

    async fn handle(&mut self, events: Vec<StageEvent>) -> Result<Vec<Outgoing>, StageError> {
        let output = self.worker.process(&self.ctx, events).await?;
        let mut out = Vec::with_capacity(output.len());
        let mut handed = Vec::new();
        for o in output {
            match (o, &self.chained) {
                (Output::Next(stage, event), Some((next, _))) if stage == *next => {
                    handed.push(event)
                }
                (o, _) => out.push(record(&self.ctx, o)),
            }
        }
        if let Some((next, worker)) = &mut self.chained
            && !handed.is_empty()
        {
            metrics::counter!("chorus_stage_events_total", "stage" => next.name())
                .increment(handed.len() as u64);
            let chained = worker.process(&self.ctx, handed).await?;
            out.extend(chained.into_iter().map(|o| record(&self.ctx, o)));
        }
        Ok(out)
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

/// The record to publish for `output`: an event for a next stage goes to its topic,
/// keyed by conversation (a presence notice: by user).
fn record(ctx: &StageContext, output: Output) -> Outgoing {
    match output {
        Output::Next(stage, event) => {
            Outgoing::new(ctx.topics.stage(stage), event.key(), encode(&event))
        }
        Output::Record(record) => record,
    }
}

/// Pops `stage` off a message's routing slip and addresses it to the next stage, if any.
pub fn forward(stage: Stage, event: StageEvent) -> Option<Output> {
    let StageEvent::Message(mut m) = event else {
        // Notices (typing, read, presence) go straight to the route stage.
        return Some(Output::Next(Stage::Route, event));
    };
    if m.route.first() == Some(&stage) {
        m.route.remove(0);
    }
    let next = *m.route.first()?;
    Some(Output::Next(next, StageEvent::Message(m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::event::{Delivery, MessageEvent};
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
        ) -> Result<Vec<Output>, StageError> {
            let bodies = events.into_iter().filter_map(|e| match e {
                StageEvent::Message(m) => Some(m.body),
                _ => None,
            });
            bodies
                .map(|body| match body.as_str() {
                    "poison" => Err(StoreError::Corrupt("cannot store this".into()).into()),
                    _ => Ok(Output::Record(Outgoing::new("out", body.clone(), body))),
                })
                .collect()
        }
    }

    /// A person's message with the idempotency key `key`, not stored yet, on `route`.
    fn event_of(
        sender: UserId,
        conversation: ConversationId,
        key: &str,
        body: &str,
        route: Vec<Stage>,
    ) -> MessageEvent {
        MessageEvent {
            mentions: Vec::new(),
            reply_to: None,
            attachments: Vec::new(),
            kind: chorus_core::model::MessageKind::Text,
            target_id: None,
            emoji: None,
            remove: false,
            message_id: MessageId::derive(sender, conversation, key),
            client_msg_id: key.into(),
            conversation_id: conversation,
            sender_id: sender,
            session_id: None,
            body: body.into(),
            seq: None,
            sent_at: chrono::Utc::now(),
            origin: Origin::User,
            hops: 0,
            route,
            suppress: Vec::new(),
            budget: None,
        }
    }

    fn message(body: &str) -> Vec<u8> {
        let (sender, conversation) = (UserId::new(), ConversationId::new());
        let event = event_of(sender, conversation, body, body, vec![Stage::Store]);
        encode(&StageEvent::Message(event))
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

    /// Runs the store stage in a process running `local` stages, and the route stage
    /// in a process of its own if `local` has not got it, on one new message from `a`
    /// to `b` (whose session is on node `n1`). Returns the delivery to `n1` and the
    /// records published to the route stage's topic meanwhile.
    async fn store_with(local: Vec<Stage>) -> (Delivery, usize) {
        let log = MemoryLog::new();
        let topics = Topics::new("t");
        let node = chorus_core::NodeId("n1".into());
        let (store_topic, route_topic, deliver_topic) = (
            topics.stage(Stage::Store),
            topics.stage(Stage::Route),
            topics.deliver(&node),
        );
        for t in [
            &store_topic,
            &route_topic,
            &deliver_topic,
            &topics.dead_letter(),
        ] {
            log.create_topic(t, 1).await.unwrap();
        }
        // Groups of their own, so that whatever reaches these topics is kept for them.
        let mut delivered = log
            .subscribe("check-deliver", &[deliver_topic])
            .await
            .unwrap();
        let _route_reader = log
            .subscribe("check-route", std::slice::from_ref(&route_topic))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), &log, topics).await;
        let store = ctx.directory.store();
        let a = store.create_user("a", "x").await.unwrap();
        let b = store.create_user("b", "x").await.unwrap();
        let (conversation, _) = store.direct(a.id, b.id).await.unwrap();
        ctx.registry
            .register(b.id, &node, chorus_core::SessionId::new())
            .await
            .unwrap();
        let event = StageEvent::Message(event_of(
            a.id,
            conversation.id,
            "c1",
            "hello",
            vec![Stage::Store, Stage::Route],
        ));
        log.publish(vec![Outgoing::new(
            store_topic,
            event.key(),
            encode(&event),
        )])
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let mut running = vec![];
        if !local.contains(&Stage::Route) {
            let route = run_stage(Stage::Route, vec![Stage::Route], ctx.clone(), stop.clone());
            running.push(tokio::spawn(route));
        }
        running.push(tokio::spawn(run_stage(
            Stage::Store,
            local,
            ctx,
            stop.clone(),
        )));
        let next_delivery = async {
            loop {
                if let Some(r) = delivered.next_batch(10).await.unwrap().pop() {
                    return r;
                }
            }
        };
        let record = tokio::time::timeout(std::time::Duration::from_secs(30), next_delivery)
            .await
            .expect("the message was delivered");
        stop.cancel();
        for stage in running {
            stage.await.unwrap().unwrap();
        }
        let delivery = decode::<Delivery>(&record.payload).unwrap();
        (delivery, log.retained(&route_topic).unwrap())
    }

    #[tokio::test]
    async fn a_retry_of_a_stored_message_goes_on_as_stored_whatever_it_says() {
        let log = MemoryLog::new();
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path(), &log, Topics::new("t")).await;
        let store = ctx.directory.store();
        let a = store.create_user("a", "x").await.unwrap();
        let b = store.create_user("b", "x").await.unwrap();
        let (conversation, _) = store.direct(a.id, b.id).await.unwrap();
        let file = chorus_core::AttachmentId::new();
        store
            .begin_attachment(file, a.id, "f.txt", "text/plain", chrono::Utc::now())
            .await
            .unwrap();
        assert!(store.finish_attachment(file, 1, "ab", 100).await.unwrap());
        let shape = store.attachment(file).await.unwrap().unwrap().attachment;
        let send = |body: &str, reply_to, attachments| MessageEvent {
            reply_to,
            attachments,
            ..event_of(
                a.id,
                conversation.id,
                "same",
                body,
                vec![Stage::Store, Stage::Route],
            )
        };
        let first = send("first", None, vec![shape.clone()]);
        let retry = send(
            "retry",
            Some(MessageId::derive(b.id, conversation.id, "x")),
            vec![],
        );
        let mut stage = crate::store::StoreStage;
        let mut forwarded = Vec::new();
        for event in [first, retry] {
            let out = stage
                .process(&ctx, vec![StageEvent::Message(event)])
                .await
                .unwrap();
            let [Output::Next(Stage::Route, StageEvent::Message(m))] = &out[..] else {
                panic!("{out:?}")
            };
            forwarded.push(m.clone());
        }
        assert_eq!(forwarded[1].seq, Some(1));
        assert_eq!(forwarded[1].body, "first");
        assert_eq!(forwarded[1].attachments, vec![shape]);
        assert_eq!(forwarded[1].reply_to, None);
    }

    fn delivered_seq(delivery: &Delivery) -> i64 {
        match delivery {
            Delivery::Message { message, .. } => message.seq,
            other => panic!("not a message delivery: {other:?}"),
        }
    }

    #[tokio::test]
    async fn with_route_in_the_same_process_the_store_stage_delivers_itself() {
        let (delivery, via_route_topic) = store_with(vec![Stage::Store, Stage::Route]).await;
        assert_eq!(delivered_seq(&delivery), 1);
        assert_eq!(via_route_topic, 0, "nothing went through the route topic");
    }

    #[tokio::test]
    async fn with_route_elsewhere_the_store_stage_forwards_to_its_topic() {
        let (delivery, via_route_topic) = store_with(vec![Stage::Store]).await;
        assert_eq!(delivered_seq(&delivery), 1);
        assert_eq!(
            via_route_topic, 1,
            "the message went through the route topic"
        );
    }

    #[test]
    fn only_route_is_chained_and_only_where_it_runs() {
        let all = [
            Stage::AutomateOut,
            Stage::Store,
            Stage::AutomateIn,
            Stage::Route,
        ];
        for stage in [Stage::AutomateOut, Stage::Store, Stage::AutomateIn] {
            assert_eq!(chained(stage, &all), Some(Stage::Route));
            assert_eq!(chained(stage, &[stage]), None);
        }
        assert_eq!(chained(Stage::Route, &all), None);
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
        let running = tokio::spawn(run_worker(
            Stage::Store,
            Box::new(Picky),
            None,
            ctx,
            stop.clone(),
        ));
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
