//! The observer: reads the requests and results topics (a consumer group of its own),
//! measures arrival rate, service rate, response times and queue depth, decides every
//! tick how many workers there should be ([`autoscale`]), publishes each decision on
//! `<prefix>.observer.decisions`, exports it as Prometheus gauges (for KEDA or an HPA),
//! and, when it runs in the same process as the worker pool (embedded mode), resizes
//! the pool.
//!
//! Without a local pool the observer cannot count the workers; it takes the number it
//! last asked for as the number running (what the HPA following its gauge converges
//! to).

pub mod autoscale;

use crate::pool::WorkerPool;
use crate::{JobsContext, JobsError};
use async_trait::async_trait;
use autoscale::{Autoscaler, Completion, Decision, Samples};
use chorus_config::ObserverConfig;
use chorus_core::JobId;
use chorus_core::event::{JobOutcome, JobRequest, ObserverReport, decode, encode};
use chorus_log::consume::Decoder;
use chorus_log::{ConsumerLoop, Handler, Outgoing, Record, Subscription};
use chorus_store::{Store, StoreError};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Jobs not finished after this long are no longer counted as queued (their outcome
/// was lost, or they were deleted before a worker saw them), milliseconds.
const FORGET_AFTER_MS: i64 = 3600 * 1000;

/// The observer's configuration: what an administrator stored, else `defaults`.
pub async fn current_config(
    store: &dyn Store,
    defaults: &ObserverConfig,
) -> Result<ObserverConfig, StoreError> {
    Ok(store
        .observer_config()
        .await?
        .and_then(|text| serde_json::from_str::<ObserverConfig>(&text).ok())
        .filter(|c| c.validate().is_ok())
        .unwrap_or_else(|| defaults.clone()))
}

/// What the observer knows of the jobs in flight.
#[derive(Default)]
pub struct Measurements {
    samples: Samples,
    /// Submitted and not finished, with their submission time.
    outstanding: HashMap<JobId, i64>,
    /// Finished recently (a result read before its request, or a duplicate result).
    finished: HashMap<JobId, i64>,
}

impl Measurements {
    /// A request read from the log.
    pub fn requested(&mut self, request: &JobRequest) {
        let at = request.submitted_at.timestamp_millis();
        if self.finished.contains_key(&request.job_id)
            || self.outstanding.insert(request.job_id, at).is_some()
        {
            return;
        }
        self.samples.arrive(at);
    }

    /// An outcome read from the log.
    pub fn finished(&mut self, outcome: &JobOutcome) {
        let at = outcome.finished_at.timestamp_millis();
        if self.finished.insert(outcome.job_id, at).is_some() {
            return;
        }
        if self.outstanding.remove(&outcome.job_id).is_none() {
            // The request has not been read yet (or never will be): count the arrival.
            self.samples.arrive(outcome.submitted_at.timestamp_millis());
        }
        if outcome.ran {
            let response = (outcome.finished_at - outcome.submitted_at).num_milliseconds();
            self.samples.complete(Completion {
                at_ms: at,
                service_ms: outcome.elapsed_ms,
                response_ms: response.max(0) as u64,
            });
        }
    }

    /// Jobs submitted and not finished.
    pub fn queue_depth(&self) -> u64 {
        self.outstanding.len() as u64
    }

    /// The samples the decision reads.
    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Forgets what no window will read again.
    pub fn prune(&mut self, now_ms: i64, stable_window_ms: i64) {
        self.samples.prune(now_ms - stable_window_ms);
        self.outstanding
            .retain(|_, &mut t| t > now_ms - FORGET_AFTER_MS);
        self.finished
            .retain(|_, &mut t| t > now_ms - 2 * stable_window_ms.max(60_000));
    }
}

/// Runs the observer until `stop`. With `pool`, applies decisions to it.
pub async fn run_observer(
    ctx: JobsContext,
    pool: Option<Arc<WorkerPool>>,
    stop: CancellationToken,
) -> Result<(), JobsError> {
    let sub = Subscription {
        name: "observer",
        group: format!("{}.observer", ctx.topics.observer_decisions()),
        topics: vec![ctx.topics.jobs_requests(), ctx.topics.jobs_results()],
        batch: 1024,
        // The workers and the recorder set aside what they cannot read.
        dead_letter: None,
    };
    let requests = ctx.topics.jobs_requests();
    let read: Decoder<Observed> = Box::new(move |record: &Record| {
        Ok(if *record.topic == *requests {
            Observed::Requested(decode(&record.payload)?)
        } else {
            Observed::Finished(decode(&record.payload)?)
        })
    });
    let observing = Observing(Measurements::default());
    let mut consumer = ConsumerLoop::subscribe(ctx.log.clone(), sub, read, observing).await?;
    let mut autoscaler = Autoscaler::default();
    let mut assumed = ctx.config.observer.min_workers;
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.config.observer.tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            batch = consumer.next_batch() => consumer.process(batch?).await?,
            _ = tick.tick() => {
                let measurements = &mut consumer.handler_mut().0;
                let config = current_config(ctx.store.as_ref(), &ctx.config.observer).await?;
                let now = Utc::now();
                let now_ms = now.timestamp_millis();
                measurements.prune(now_ms, (config.stable_window_secs * 1000) as i64);
                let workers = pool.as_ref().map_or(assumed, |p| p.len());
                let decision = autoscaler.decide(
                    measurements.samples(),
                    measurements.queue_depth(),
                    workers,
                    now_ms,
                    &config,
                );
                if let Some(pool) = &pool {
                    if decision.desired != workers {
                        tracing::info!(from = workers, to = decision.desired, panic = decision.panic, reason = %decision.reason, "resizing the worker pool");
                        pool.resize(decision.desired);
                    }
                } else {
                    assumed = decision.desired;
                }
                let report = report(&decision, measurements.queue_depth(), workers, now);
                export(&report);
                let record = Outgoing::new(ctx.topics.observer_decisions(), b"observer".to_vec(), encode(&report));
                ctx.log.publish(vec![record]).await?;
            }
        }
    }
}

/// A record of the requests or the results topic.
enum Observed {
    Requested(JobRequest),
    Finished(JobOutcome),
}

/// Feeds what the observer reads to its measurements.
struct Observing(Measurements);

#[async_trait]
impl Handler for Observing {
    type Event = Observed;
    type Error = JobsError;

    async fn handle(&mut self, events: Vec<Observed>) -> Result<Vec<Outgoing>, JobsError> {
        for event in &events {
            match event {
                Observed::Requested(request) => self.0.requested(request),
                Observed::Finished(outcome) => self.0.finished(outcome),
            }
        }
        Ok(Vec::new())
    }
}

/// The report of one decision.
pub fn report(
    decision: &Decision,
    queue_depth: u64,
    workers: u32,
    at: chrono::DateTime<Utc>,
) -> ObserverReport {
    ObserverReport {
        at,
        arrival_rate: decision.stable.arrival_rate,
        service_rate: decision.stable.service_rate,
        mean_response_ms: decision.stable.mean_response_ms,
        p95_response_ms: decision.stable.p95_response_ms,
        queue_depth,
        workers,
        desired_workers: decision.desired,
        panic: decision.panic,
        action: decision.action.as_str().to_owned(),
        reason: decision.reason.clone(),
    }
}

/// Sets the observer's gauges.
fn export(r: &ObserverReport) {
    metrics::gauge!("chorus_observer_workers").set(f64::from(r.workers));
    metrics::gauge!("chorus_observer_desired_workers").set(f64::from(r.desired_workers));
    metrics::gauge!("chorus_observer_arrival_rate").set(r.arrival_rate);
    metrics::gauge!("chorus_observer_service_rate").set(r.service_rate);
    metrics::gauge!("chorus_observer_p95_response_seconds").set(r.p95_response_ms / 1000.0);
    metrics::gauge!("chorus_observer_queue_depth").set(r.queue_depth as f64);
    metrics::gauge!("chorus_observer_panic").set(if r.panic { 1.0 } else { 0.0 });
}
