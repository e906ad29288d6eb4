//! The event log every role talks through.
//!
//! Roles never call each other: the gateway publishes a message to the first stage's
//! topic, each stage consumes its topic as a consumer group and publishes to the next,
//! and the route stage publishes to the delivery topic of each gateway node. This crate
//! holds the contract ([`EventLog`], [`Consumer`]), the loop every consumer runs
//! ([`consume`](mod@consume): decode, handle, publish, commit, set poison events
//! aside) and the backends:
//!
//! - [`memory`]: in-process, partitioned, with consumer groups and committed offsets;
//!   durable with a journal in a directory (`local://`, the embedded default) or in
//!   memory only (`memory://`).
//! - `kafka` (feature `kafka`): Apache Kafka or any Kafka-protocol broker (`kafka://`).
//!
//! # Contract
//!
//! - A topic has a fixed number of partitions; a record goes to the partition chosen by
//!   hashing its key, so records with one key keep their order.
//! - Consumers subscribe as members of a named group. The group's members split the
//!   topic's partitions between them; each partition has at most one member at a time.
//!   When members come or go, partitions move (a rebalance).
//! - A consumer sees each of its partitions in offset order. A new group starts at the
//!   earliest record still retained.
//! - Delivery is at least once: a partition's new owner starts after the group's last
//!   committed offset, so whatever was fetched but not committed is seen again.
//!   Consumers must therefore be idempotent, and commit only once the effect of a
//!   record is durable.
//! - `publish` returns once the backend holds the record (for Kafka: acknowledged by
//!   all in-sync replicas).

pub mod consume;
mod journal;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;

pub use consume::{ConsumerLoop, Handler, HandlerError, Subscription, consume, each};

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// A publish in flight: resolves once the backend holds every record.
pub type Pending = futures::future::BoxFuture<'static, Result<(), LogError>>;

/// A record fetched from the log.
#[derive(Clone, Debug)]
pub struct Record {
    /// The topic it came from.
    pub topic: Arc<str>,
    /// The partition it came from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The partitioning key.
    pub key: Bytes,
    /// The payload (an encoded envelope).
    pub payload: Bytes,
}

/// A record to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Destination topic.
    pub topic: String,
    /// Partitioning key: records with one key keep their order.
    pub key: Bytes,
    /// The payload.
    pub payload: Bytes,
}

impl Outgoing {
    /// A record for `topic` with `key`.
    pub fn new(topic: impl Into<String>, key: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            key: key.into(),
            payload: payload.into(),
        }
    }
}

/// A backend's own error (Kafka's, an I/O error of the journal, …) or a description of
/// what went wrong.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Publishing to or subscribing to a topic that was never created.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The log is shutting down.
    #[error("the event log is closed")]
    Closed,
    /// The backend failed (broker unreachable, timeout, …). The text includes the
    /// backend's error, for logs that print one line; `source()` is that error.
    #[error("event log backend: {0}")]
    Backend(#[source] BoxError),
}

/// A partitioned log with consumer groups; see the crate docs for the contract.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates `topic` with `partitions` partitions unless it exists.
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError>;

    /// Deletes `topic` and its group offsets (e.g. a departed node's delivery topic).
    async fn delete_topic(&self, topic: &str) -> Result<(), LogError>;

    /// Appends records; returns once every one is held by the backend.
    async fn publish(&self, records: Vec<Outgoing>) -> Result<(), LogError> {
        self.enqueue(records)?.await
    }

    /// Hands records to the backend now and returns a future that resolves once it
    /// holds them all. Records of successive calls keep the order of the calls, so a
    /// caller can have many publishes in flight (a WebSocket session pipelining its
    /// sends) without reordering them.
    fn enqueue(&self, records: Vec<Outgoing>) -> Result<Pending, LogError>;

    /// Joins consumer group `group` on `topics`.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Consumer>, LogError>;

    /// Whether the backend answers.
    async fn health(&self) -> Result<(), LogError>;

    /// Whether every record on `topics` has been committed by every group reading it.
    /// A node shutting down waits for this before stopping its stages, so that a
    /// volatile log loses nothing it accepted; durable backends keep records across
    /// restarts and need not wait.
    async fn drained(&self, topics: &[String]) -> bool {
        let _ = topics;
        true
    }
}

/// One member of a consumer group. Dropping it leaves the group.
#[async_trait]
pub trait Consumer: Send {
    /// Waits until records are available on this member's partitions and returns up
    /// to `max` of them, each partition's in offset order. Cancel-safe: a call that is
    /// dropped before it returns consumes nothing.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError>;

    /// Marks `records` (and everything before them in their partitions) processed.
    async fn commit(&mut self, records: &[Record]) -> Result<(), LogError>;

    /// Reports how far behind this member is as `chorus_consumer_lag{group, topic,
    /// partition}`: per partition it holds, the records between its next position and
    /// the partition's end. Cheap enough to call after every batch (Kafka asks the
    /// broker for watermarks at most every few seconds, off the caller's task).
    fn record_lag(&mut self, group: &str) {
        let _ = group;
    }
}

/// Sets one partition's `chorus_consumer_lag`.
pub fn set_lag(group: &str, topic: &str, partition: u32, lag: u64) {
    metrics::gauge!(
        "chorus_consumer_lag",
        "group" => group.to_owned(),
        "topic" => topic.to_owned(),
        "partition" => partition.to_string(),
    )
    .set(lag as f64);
}

/// The highest offset per (topic, partition) in `records`: what a commit stores.
pub fn commit_positions(records: &[Record]) -> Vec<(Arc<str>, u32, u64)> {
    let mut out: Vec<(Arc<str>, u32, u64)> = Vec::new();
    for r in records {
        match out
            .iter_mut()
            .find(|(t, p, _)| *p == r.partition && **t == *r.topic)
        {
            Some(entry) => entry.2 = entry.2.max(r.offset),
            None => out.push((r.topic.clone(), r.partition, r.offset)),
        }
    }
    out
}

/// The partition of `key` among `partitions` (FNV-1a: stable across processes and builds).
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in key {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}
