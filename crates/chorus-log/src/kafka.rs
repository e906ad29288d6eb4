//! The Kafka event log: Apache Kafka, Redpanda or any Kafka-protocol broker, through
//! librdkafka.
//!
//! - Producer: idempotent (`enable.idempotence`, `acks=all`), a short linger so that
//!   records published together travel together; `publish` returns once every record
//!   is acknowledged.
//! - Consumers: one librdkafka consumer per group member, cooperative-sticky
//!   assignment, auto-commit of *stored* offsets only: [`Consumer::commit`] stores the
//!   offsets of records whose effect is durable, and librdkafka commits what is stored
//!   every second and when partitions are revoked. A crash therefore replays at most
//!   the last second of processed records, which the stages' idempotence absorbs, and
//!   nothing is committed per message.
//!
//! URL: `kafka://HOST:PORT[,HOST:PORT…][?replication=N&session_timeout_ms=…
//! &heartbeat_ms=…&max_poll_ms=…]`.

use crate::{Consumer, EventLog, LogError, Outgoing, Pending, Record, commit_positions};
use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication, TopicResult};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long `publish` waits for room in the producer's queue and for acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings parsed from a `kafka://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Replication factor of the topics chorus creates.
    pub replication: i32,
    /// `session.timeout.ms` of consumers.
    pub session_timeout_ms: u32,
    /// `heartbeat.interval.ms` of consumers.
    pub heartbeat_ms: u32,
    /// `max.poll.interval.ms` of consumers.
    pub max_poll_ms: u32,
}

impl KafkaSettings {
    /// Parses `kafka://HOST:PORT[,…][?key=value&…]`.
    pub fn parse(url: &str) -> Result<Self, LogError> {
        let bad = |m: String| LogError::Backend(format!("invalid Kafka URL {url}: {m}").into());
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("expected kafka://".into()))?;
        let (brokers, query) = rest.split_once('?').unwrap_or((rest, ""));
        if brokers.is_empty() {
            return Err(bad("no broker address".into()));
        }
        let mut s = KafkaSettings {
            brokers: brokers.to_owned(),
            replication: 1,
            session_timeout_ms: 6000,
            heartbeat_ms: 500,
            max_poll_ms: 10_000,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("`{pair}` is not key=value")))?;
            let n: u32 = v
                .parse()
                .map_err(|_| bad(format!("`{k}` must be a number")))?;
            match k {
                "replication" => s.replication = n as i32,
                "session_timeout_ms" => s.session_timeout_ms = n,
                "heartbeat_ms" => s.heartbeat_ms = n,
                "max_poll_ms" => s.max_poll_ms = n,
                other => return Err(bad(format!("unknown option `{other}`"))),
            }
        }
        Ok(s)
    }
}

/// The Kafka-backed event log.
pub struct KafkaLog {
    settings: KafkaSettings,
    /// Replaced when it hits a fatal error (an idempotent producer whose broker lost
    /// its state, e.g. a broker restarted without its data, cannot go on).
    producer: std::sync::RwLock<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist. Brokers may create a topic on first produce; chorus
    /// does not want that (a departed node's delivery topic would come back), so a
    /// topic is published to only once it was created or seen in the metadata.
    known: std::sync::RwLock<std::collections::HashSet<String>>,
}

fn new_producer(settings: &KafkaSettings) -> Result<FutureProducer, LogError> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(backend)
}

/// Admin requests give up after a while instead of waiting for a broker for ever.
fn admin_options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(Duration::from_secs(10)))
}

fn backend(e: KafkaError) -> LogError {
    LogError::Backend(Box::new(e))
}

/// Checks the per-topic results of an admin request (`doing` it to topics): `done`
/// is the code saying there was nothing to do (the topic exists, or is gone).
fn check_admin(
    results: Vec<TopicResult>,
    doing: &str,
    done: RDKafkaErrorCode,
) -> Result<(), LogError> {
    for r in results {
        match r {
            Err((name, code)) if code != done => {
                return Err(LogError::Backend(
                    format!("{doing} topic {name}: {code}").into(),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

impl KafkaLog {
    /// Connects to the brokers named by a `kafka://` URL.
    pub fn connect(url: &str) -> Result<Self, LogError> {
        let settings = KafkaSettings::parse(url)?;
        let producer = std::sync::RwLock::new(new_producer(&settings)?);
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .create()
            .map_err(backend)?;
        Ok(Self {
            settings,
            producer,
            admin,
            known: Default::default(),
        })
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the producer if it is in a fatal state; records in flight on it fail
    /// and their publishers retry.
    fn renew_if_fatal(&self, producer: &FutureProducer) -> Result<(), LogError> {
        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::warn!(%code, %reason, "Kafka producer failed fatally; creating a new one");
            metrics::counter!("chorus_kafka_producer_renewed_total").increment(1);
            *self.producer.write().unwrap_or_else(|e| e.into_inner()) =
                new_producer(&self.settings)?;
        }
        Ok(())
    }

    fn is_known(&self, topic: &str) -> bool {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }

    /// Refreshes the known topics from the brokers' metadata.
    async fn refresh_known(&self) -> Result<(), LogError> {
        let producer = self.producer();
        let names = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|m| {
                    m.topics()
                        .iter()
                        .filter(|t| t.error().is_none())
                        .map(|t| t.name().to_owned())
                        .collect::<Vec<_>>()
                })
                .map_err(backend)
        })
        .await
        .map_err(|e| LogError::Backend(Box::new(e)))??;
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(names);
        Ok(())
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        let new = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(self.settings.replication),
        );
        let results = self
            .admin
            .create_topics(&[new], &admin_options())
            .await
            .map_err(backend)?;
        check_admin(results, "creating", RDKafkaErrorCode::TopicAlreadyExists)?;
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
        let results = self
            .admin
            .delete_topics(&[topic], &admin_options())
            .await
            .map_err(backend)?;
        check_admin(
            results,
            "deleting",
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )
    }

    async fn publish(&self, records: Vec<Outgoing>) -> Result<(), LogError> {
        if records.iter().any(|r| !self.is_known(&r.topic)) {
            self.refresh_known().await?;
            if let Some(r) = records.iter().find(|r| !self.is_known(&r.topic)) {
                return Err(LogError::UnknownTopic(r.topic.clone()));
            }
        }
        let producer = self.producer();
        let sends = records.iter().map(|r| {
            producer.send(
                FutureRecord::to(&r.topic)
                    .key(r.key.as_ref())
                    .payload(r.payload.as_ref()),
                PUBLISH_TIMEOUT,
            )
        });
        for result in futures::future::join_all(sends).await {
            if let Err((e, msg)) = result {
                self.renew_if_fatal(&producer)?;
                return Err(match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition)
                    | KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopic) => {
                        LogError::UnknownTopic(msg.topic().to_owned())
                    }
                    other => backend(other),
                });
            }
        }
        Ok(())
    }

    fn enqueue(&self, records: Vec<Outgoing>) -> Result<Pending, LogError> {
        // A topic not seen yet needs a metadata look-up first: the caller takes the
        // slower `publish` path for it.
        if let Some(r) = records.iter().find(|r| !self.is_known(&r.topic)) {
            return Err(LogError::UnknownTopic(r.topic.clone()));
        }
        let producer = self.producer();
        let mut deliveries = Vec::with_capacity(records.len());
        for r in &records {
            let record = FutureRecord::to(&r.topic)
                .key(r.key.as_ref())
                .payload(r.payload.as_ref());
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => return Err(backend(e)),
            }
        }
        Ok(Box::pin(async move {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(backend(e)),
                    Err(_) => {
                        return Err(LogError::Backend("the producer dropped a record".into()));
                    }
                }
            }
            Ok(())
        }))
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Consumer>, LogError> {
        let s = &self.settings;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &s.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", s.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", s.heartbeat_ms.to_string())
            .set("max.poll.interval.ms", s.max_poll_ms.to_string())
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(backend)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(backend)?;
        Ok(Box::new(KafkaConsumer {
            consumer: Arc::new(consumer),
            topics: HashMap::new(),
            lag_checked: None,
            lag_running: Arc::default(),
        }))
    }

    async fn health(&self) -> Result<(), LogError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|_| ())
                .map_err(backend)
        })
        .await
        .map_err(|e| LogError::Backend(Box::new(e)))?
    }
}

/// One member of a consumer group.
struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    /// Interned topic names, so records share one allocation per topic.
    topics: HashMap<String, Arc<str>>,
    /// When the lag was last measured.
    lag_checked: Option<std::time::Instant>,
    /// A measurement is in flight.
    lag_running: Arc<std::sync::atomic::AtomicBool>,
}

/// How often a consumer measures its lag (each measurement asks the broker).
const LAG_EVERY: Duration = Duration::from_secs(5);
/// How long one partition's watermarks may take.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// Copies a borrowed message into a [`Record`].
fn own(
    topics: &mut HashMap<String, Arc<str>>,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Record {
    {
        let topic = topics
            .entry(m.topic().to_owned())
            .or_insert_with(|| Arc::from(m.topic()))
            .clone();
        Record {
            topic,
            partition: m.partition() as u32,
            offset: m.offset() as u64,
            key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
            payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        let first = self.consumer.recv().await.map_err(backend)?;
        let mut batch = vec![own(&mut self.topics, &first)];
        drop(first);
        while batch.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(own(&mut self.topics, &m)),
                Some(Err(e)) => return Err(backend(e)),
                None => break,
            }
        }
        Ok(batch)
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in commit_positions(records) {
            tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(offset as i64 + 1))
                .map_err(backend)?;
        }
        match self.consumer.store_offsets(&tpl) {
            Ok(()) => Ok(()),
            // The partition moved to another member in a rebalance: it will see these
            // records again, as the contract allows.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State))
            | Err(KafkaError::StoreOffset(RDKafkaErrorCode::UnknownPartition)) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    fn record_lag(&mut self, group: &str) {
        if self.lag_checked.is_some_and(|t| t.elapsed() < LAG_EVERY)
            || self
                .lag_running
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        self.lag_checked = Some(std::time::Instant::now());
        let (consumer, running, group) = (
            self.consumer.clone(),
            self.lag_running.clone(),
            group.to_owned(),
        );
        // Watermarks are a request to the broker, and librdkafka's call blocks.
        tokio::task::spawn_blocking(move || {
            if let Ok(positions) = consumer.position() {
                for e in positions.elements() {
                    let Offset::Offset(pos) = e.offset() else {
                        continue;
                    };
                    if let Ok((_, high)) =
                        consumer.fetch_watermarks(e.topic(), e.partition(), LAG_TIMEOUT)
                    {
                        let lag = u64::try_from(high - pos).unwrap_or(0);
                        crate::set_lag(&group, e.topic(), e.partition() as u32, lag);
                    }
                }
            }
            running.store(false, std::sync::atomic::Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let s =
            KafkaSettings::parse("kafka://a:9092,b:9092?replication=3&max_poll_ms=300000").unwrap();
        assert_eq!(s.brokers, "a:9092,b:9092");
        assert_eq!(s.replication, 3);
        assert_eq!(s.max_poll_ms, 300_000);
        assert_eq!(s.session_timeout_ms, 6000);
        assert!(KafkaSettings::parse("kafka://").is_err());
        assert!(KafkaSettings::parse("kafka://a:1?bogus=1").is_err());
        assert!(KafkaSettings::parse("redis://a").is_err());
    }
}
