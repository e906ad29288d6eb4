//! The loop every consumer shares: fetch a batch, decode it, handle it, publish what
//! came out, commit. What a consumer does is its [`Handler`]; the rest is here, once:
//!
//! - A record that cannot be decoded, and an event whose handling fails in a way that
//!   would fail the same way for ever (a poison event), is set aside on the dead-letter
//!   topic and the rest of the batch goes on.
//! - Any other failure (a dependency down) stops the loop before the batch is
//!   committed: its supervisor restarts it, and the batch comes again.
//! - The batch is committed only once what came out of it is published, so a crash
//!   in between replays it (handlers are idempotent).

use crate::{Consumer, EventLog, LogError, Outgoing, Record};
use async_trait::async_trait;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

/// Why a record could not be decoded.
pub type DecodeError = Box<dyn std::error::Error + Send + Sync>;

/// Reads a record into what a handler handles. Must give the same answer every time (a
/// batch with a poison event in it is decoded again, to handle its events one by one).
pub type Decoder<T> = Box<dyn Fn(&Record) -> Result<T, DecodeError> + Send>;

/// The decoder that reads each record's payload with `decode` (e.g. the envelope
/// codec of `chorus_core::event`).
pub fn payload<T, E>(decode: fn(&[u8]) -> Result<T, E>) -> Decoder<T>
where
    T: 'static,
    E: Into<DecodeError> + 'static,
{
    Box::new(move |record| decode(&record.payload).map_err(Into::into))
}

/// Why a [`Handler`] failed.
pub trait HandlerError: From<LogError> + Display + Send {
    /// Whether the events being handled are at fault, so that handling them again
    /// would fail the same way for ever (they are set aside), rather than a dependency
    /// that is down (the loop stops, to handle them again once restarted).
    fn is_poison(&self) -> bool;
}

impl HandlerError for LogError {
    fn is_poison(&self) -> bool {
        false
    }
}

/// What one consumer does with the records it reads.
#[async_trait]
pub trait Handler: Send {
    /// What a record holds.
    type Event: Send;
    /// Why handling failed.
    type Error: HandlerError;

    /// Handles events, in log order, and returns the records to publish before the
    /// batch is committed. Must be idempotent: after a crash the same batch comes again.
    async fn handle(&mut self, events: Vec<Self::Event>) -> Result<Vec<Outgoing>, Self::Error>;

    /// Publishes what handling a batch produced, dead letters included.
    async fn publish(&mut self, log: &dyn EventLog, out: Vec<Outgoing>) -> Result<(), LogError> {
        log.publish(out).await
    }

    /// Called once a batch fetched at `started` is committed, with the number of events
    /// decoded from it (poison events set aside included).
    fn committed(&mut self, handled: usize, started: Instant) {
        let _ = (handled, started);
    }
}

/// Joins `sub`'s group and consumes until `stop` resolves: a [`ConsumerLoop`] run to
/// its end.
pub async fn consume<H: Handler>(
    log: Arc<dyn EventLog>,
    sub: Subscription,
    decode: Decoder<H::Event>,
    handler: H,
    stop: impl Future<Output = ()>,
) -> Result<(), H::Error> {
    ConsumerLoop::subscribe(log, sub, decode, handler)
        .await?
        .run(stop)
        .await
}

/// A [`Handler`] of one event at a time: `handle` returns the records to publish for
/// each (none, for a consumer that only applies events to local state).
pub fn each<E, F, Fut, Er>(handle: F) -> Each<E, F>
where
    F: FnMut(E) -> Fut + Send,
    Fut: Future<Output = Result<Vec<Outgoing>, Er>> + Send + 'static,
    E: Send + 'static,
    Er: HandlerError + 'static,
{
    Each {
        handle,
        events: PhantomData,
    }
}

/// See [`each`].
pub struct Each<E, F> {
    handle: F,
    events: PhantomData<fn(E)>,
}

#[async_trait]
impl<E, F, Fut, Er> Handler for Each<E, F>
where
    F: FnMut(E) -> Fut + Send,
    Fut: Future<Output = Result<Vec<Outgoing>, Er>> + Send + 'static,
    E: Send + 'static,
    Er: HandlerError + 'static,
{
    type Event = E;
    type Error = Er;

    async fn handle(&mut self, events: Vec<E>) -> Result<Vec<Outgoing>, Er> {
        let mut out = Vec::new();
        for event in events {
            out.extend((self.handle)(event).await?);
        }
        Ok(out)
    }
}

/// Who consumes what, and where what cannot be handled goes.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The consumer's name in logs and in `chorus_dead_letter_total{stage}`.
    pub name: &'static str,
    /// The consumer group.
    pub group: String,
    /// The topics the group reads.
    pub topics: Vec<String>,
    /// Records fetched per batch, at most.
    pub batch: usize,
    /// Where records that cannot be decoded or handled are set aside. `None` on topics
    /// that every node reads in a group of its own (control notices, observer reports):
    /// there such a record is skipped with a warning, since every node would otherwise
    /// set aside a copy of it.
    pub dead_letter: Option<String>,
}

/// A member of a consumer group running a [`Handler`]: [`ConsumerLoop::run`] until
/// stopped, or [`ConsumerLoop::next_batch`] and [`ConsumerLoop::process`] for a caller
/// with other work to select on.
pub struct ConsumerLoop<H: Handler> {
    log: Arc<dyn EventLog>,
    consumer: Box<dyn Consumer>,
    sub: Subscription,
    decode: Decoder<H::Event>,
    handler: H,
}

impl<H: Handler> ConsumerLoop<H> {
    /// Joins `sub`'s group, to read records with `decode` and handle them with
    /// `handler`.
    pub async fn subscribe(
        log: Arc<dyn EventLog>,
        sub: Subscription,
        decode: Decoder<H::Event>,
        handler: H,
    ) -> Result<Self, LogError> {
        let consumer = log.subscribe(&sub.group, &sub.topics).await?;
        Ok(Self {
            log,
            consumer,
            sub,
            decode,
            handler,
        })
    }

    /// Consumes until `stop` resolves, finishing the batch in hand first.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<(), H::Error> {
        tokio::pin!(stop);
        loop {
            let batch = tokio::select! {
                () = &mut stop => return Ok(()),
                batch = self.next_batch() => batch?,
            };
            self.process(batch).await?;
        }
    }

    /// Waits for the next batch. Cancel-safe: a call dropped before it returns
    /// consumes nothing.
    pub async fn next_batch(&mut self) -> Result<Vec<Record>, LogError> {
        self.consumer.next_batch(self.sub.batch).await
    }

    /// Decodes and handles `batch`, publishes what came out and the dead letters,
    /// commits, and reports the group's lag.
    pub async fn process(&mut self, batch: Vec<Record>) -> Result<(), H::Error> {
        let started = Instant::now();
        let mut readable = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        let mut out = Vec::new();
        for record in &batch {
            match (self.decode)(record) {
                Ok(event) => {
                    readable.push(record);
                    events.push(event);
                }
                Err(e) => out.extend(dead_letter(&self.sub, record, &e)),
            }
        }
        let handled = events.len();
        match self.handler.handle(events).await {
            Ok(more) => out.extend(more),
            Err(e) if !e.is_poison() => return Err(e),
            // Something in the batch cannot be handled, and handling the batch again
            // would fail the same way for ever: find it, set it aside, handle the rest.
            Err(e) => {
                tracing::warn!(consumer = self.sub.name, error = %e, "batch failed; retrying its events one by one");
                for record in readable {
                    let event = match (self.decode)(record) {
                        Ok(event) => event,
                        Err(e) => {
                            out.extend(dead_letter(&self.sub, record, &e));
                            continue;
                        }
                    };
                    match self.handler.handle(vec![event]).await {
                        Ok(more) => out.extend(more),
                        Err(e) if !e.is_poison() => return Err(e),
                        Err(e) => out.extend(dead_letter(&self.sub, record, &e)),
                    }
                }
            }
        }
        if !out.is_empty() {
            self.handler.publish(self.log.as_ref(), out).await?;
        }
        self.consumer.commit(&batch).await?;
        self.handler.committed(handled, started);
        self.consumer.record_lag(&self.sub.group);
        Ok(())
    }

    /// The handler, for a caller that keeps state in it.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }
}

/// The copy of `record` for the dead-letter topic, if the subscription has one; the
/// record is skipped either way, with a warning.
fn dead_letter(sub: &Subscription, record: &Record, error: &dyn Display) -> Option<Outgoing> {
    let fate = match sub.dead_letter {
        Some(_) => "sent to the dead-letter topic",
        None => "skipped",
    };
    tracing::warn!(
        consumer = sub.name,
        topic = %record.topic,
        partition = record.partition,
        offset = record.offset,
        %error,
        "event that cannot be handled {fate}"
    );
    let topic = sub.dead_letter.clone()?;
    metrics::counter!("chorus_dead_letter_total", "stage" => sub.name).increment(1);
    Some(Outgoing::new(
        topic,
        record.key.clone(),
        record.payload.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryLog;

    /// Handling 13 fails for good.
    #[derive(Debug)]
    struct Unlucky;

    impl Display for Unlucky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("13 cannot be handled")
        }
    }

    impl From<LogError> for Unlucky {
        fn from(_: LogError) -> Self {
            Unlucky
        }
    }

    impl HandlerError for Unlucky {
        fn is_poison(&self) -> bool {
            true
        }
    }

    async fn payloads(log: &MemoryLog, topic: &str, n: usize) -> Vec<String> {
        let group = format!("check-{topic}");
        let mut consumer = log.subscribe(&group, &[topic.into()]).await.unwrap();
        let mut got = Vec::new();
        while got.len() < n {
            for r in consumer.next_batch(n).await.unwrap() {
                got.push(String::from_utf8(r.payload.to_vec()).unwrap());
            }
        }
        got
    }

    #[tokio::test]
    async fn unreadable_and_poison_events_are_set_aside_and_the_rest_is_published() {
        let log = MemoryLog::new();
        for topic in ["in", "out", "dead"] {
            log.create_topic(topic, 1).await.unwrap();
        }
        let records = ["1", "x", "13", "2"].map(|p| Outgoing::new("in", "k", p));
        log.publish(records.to_vec()).await.unwrap();
        let sub = Subscription {
            name: "test",
            group: "g".into(),
            topics: vec!["in".into()],
            batch: 10,
            dead_letter: Some("dead".into()),
        };
        let numbers: Decoder<u32> =
            Box::new(|r: &Record| Ok(std::str::from_utf8(&r.payload)?.parse::<u32>()?));
        let double = each(|n: u32| {
            std::future::ready(match n {
                13 => Err(Unlucky),
                n => Ok(vec![Outgoing::new("out", "k", (2 * n).to_string())]),
            })
        });
        let mut consumer = ConsumerLoop::subscribe(Arc::new(log.clone()), sub, numbers, double)
            .await
            .unwrap();
        let mut seen = 0;
        while seen < records.len() {
            let batch = consumer.next_batch().await.unwrap();
            seen += batch.len();
            consumer.process(batch).await.unwrap();
        }
        assert_eq!(payloads(&log, "out", 2).await, ["2", "4"]);
        assert_eq!(payloads(&log, "dead", 2).await, ["x", "13"]);
        assert_eq!(log.retained("in"), Some(0), "every record was committed");
    }
}
