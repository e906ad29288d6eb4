//! The loop every stage shares: fetch a batch, decode, process, publish, commit.

use async_trait::async_trait;
use chorus_core::event::{DecodeError, StageEvent, decode, encode};
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
    let mut worker: Box<dyn StageWorker> = match stage {
        Stage::AutomateOut => Box::new(crate::automate_out::AutomateOut),
        Stage::Store => Box::new(crate::store::StoreStage),
        Stage::AutomateIn => Box::new(crate::automate_in::AutomateIn),
        Stage::Route => Box::new(crate::route::RouteStage),
    };
    let topic = ctx.topics.stage(stage);
    let mut consumer = ctx
        .log
        .subscribe(&group(&ctx.topics, stage), &[topic])
        .await?;
    tracing::info!(stage = stage.name(), "stage started");
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = consumer.next_batch(BATCH) => batch?,
        };
        let started = Instant::now();
        let mut events = Vec::with_capacity(batch.len());
        let mut dead = Vec::new();
        for record in &batch {
            match decode::<StageEvent>(&record.payload) {
                Ok(event) => events.push(event),
                Err(e) => dead.push(dead_letter(&ctx, stage, record, &e)),
            }
        }
        let n = events.len();
        let mut out = worker.process(&ctx, events).await?;
        out.extend(dead);
        publish(&ctx, out).await?;
        consumer.commit(&batch).await?;
        metrics::counter!("chorus_stage_events_total", "stage" => stage.name()).increment(n as u64);
        metrics::histogram!("chorus_stage_batch_seconds", "stage" => stage.name())
            .record(started.elapsed().as_secs_f64());
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

fn dead_letter(ctx: &StageContext, stage: Stage, record: &Record, e: &DecodeError) -> Outgoing {
    tracing::warn!(
        stage = stage.name(),
        topic = %record.topic,
        partition = record.partition,
        offset = record.offset,
        error = %e,
        "unreadable event sent to the dead-letter topic"
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
