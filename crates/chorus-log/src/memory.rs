//! The in-process event log: partitions in memory, consumer groups with committed
//! offsets and rebalancing, retention up to the slowest group's committed offset.
//!
//! It keeps the same contract as Kafka so that every role and test runs unchanged on
//! either. It is not durable: records not yet committed by their consumers are lost if
//! the process dies (clients retry unconfirmed sends with the same `client_msg_id`).

use crate::{
    Consumer, EventLog, LogError, Outgoing, Pending, Record, commit_positions, partition_for,
};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Records kept per partition of a topic that no group has ever consumed (the dead-
/// letter topic, in embedded mode), so that it cannot grow without bound.
const UNCONSUMED_RETENTION: usize = 10_000;

/// The in-process log. Cheap to clone; clones share the log.
#[derive(Clone, Default)]
pub struct MemoryLog {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Topic>,
    groups: HashMap<String, Group>,
    next_member: u64,
}

struct Topic {
    name: Arc<str>,
    partitions: Vec<Partition>,
    /// Bumped on every append and every rebalance of a group on this topic.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Partition {
    /// Offset of `records[0]`.
    base: u64,
    records: VecDeque<(bytes::Bytes, bytes::Bytes)>,
}

impl Partition {
    fn end(&self) -> u64 {
        self.base + self.records.len() as u64
    }
}

#[derive(Default)]
struct Group {
    topics: Vec<String>,
    /// Member ids, sorted.
    members: Vec<u64>,
    generation: u64,
    /// Next offset to read after a rebalance, per (topic, partition).
    committed: HashMap<(String, u32), u64>,
    assignment: HashMap<u64, Vec<(String, u32)>>,
}

impl Group {
    fn rebalance(&mut self, topics: &HashMap<String, Topic>) {
        self.generation += 1;
        self.assignment.clear();
        let mut all = Vec::new();
        for t in &self.topics {
            if let Some(topic) = topics.get(t) {
                all.extend((0..topic.partitions.len() as u32).map(|p| (t.clone(), p)));
            }
        }
        if self.members.is_empty() {
            return;
        }
        for (i, tp) in all.into_iter().enumerate() {
            let member = self.members[i % self.members.len()];
            self.assignment.entry(member).or_default().push(tp);
        }
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent at
        // record granularity: carry on rather than poison every role.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records retained in `topic` (all partitions): retention is observable in tests.
    pub fn retained(&self, topic: &str) -> Option<usize> {
        let state = self.lock();
        let t = state.topics.get(topic)?;
        Some(t.partitions.iter().map(|p| p.records.len()).sum())
    }
}

impl State {
    fn notify_topics(&self, names: &[String]) {
        for n in names {
            if let Some(t) = self.topics.get(n) {
                t.changed.send_modify(|v| *v += 1);
            }
        }
    }

    /// Drops records every group that reads `topic` has committed.
    fn trim(&mut self, topic: &str) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let readers: Vec<&Group> = self
            .groups
            .values()
            .filter(|g| g.topics.iter().any(|n| n == topic))
            .collect();
        for (p, part) in t.partitions.iter_mut().enumerate() {
            let keep_from = if readers.is_empty() {
                part.end()
                    .saturating_sub(UNCONSUMED_RETENTION as u64)
                    .max(part.base)
            } else {
                readers
                    .iter()
                    .map(|g| {
                        g.committed
                            .get(&(topic.to_owned(), p as u32))
                            .copied()
                            .unwrap_or(part.base)
                    })
                    .min()
                    .unwrap_or(part.base)
            };
            while part.base < keep_from && !part.records.is_empty() {
                part.records.pop_front();
                part.base += 1;
            }
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        let mut state = self.lock();
        if !state.topics.contains_key(topic) {
            let (changed, _) = watch::channel(0);
            state.topics.insert(
                topic.to_owned(),
                Topic {
                    name: Arc::from(topic),
                    partitions: (0..partitions.max(1))
                        .map(|_| Partition::default())
                        .collect(),
                    changed,
                },
            );
            let State { groups, topics, .. } = &mut *state;
            for g in groups.values_mut() {
                if g.topics.iter().any(|t| t == topic) {
                    g.rebalance(topics);
                }
            }
        }
        Ok(())
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        let mut state = self.lock();
        if let Some(t) = state.topics.remove(topic) {
            t.changed.send_modify(|v| *v += 1);
        }
        for g in state.groups.values_mut() {
            g.committed.retain(|(t, _), _| t != topic);
        }
        Ok(())
    }

    fn enqueue(&self, records: Vec<Outgoing>) -> Result<Pending, LogError> {
        let mut state = self.lock();
        if let Some(missing) = records
            .iter()
            .find(|r| !state.topics.contains_key(&r.topic))
        {
            return Err(LogError::UnknownTopic(missing.topic.clone()));
        }
        let mut touched: Vec<String> = Vec::new();
        for r in records {
            let t = state.topics.get_mut(&r.topic).expect("checked above");
            let p = partition_for(&r.key, t.partitions.len() as u32) as usize;
            t.partitions[p].records.push_back((r.key, r.payload));
            if !touched.contains(&r.topic) {
                touched.push(r.topic);
            }
        }
        for name in &touched {
            state.trim_unconsumed(name);
        }
        state.notify_topics(&touched);
        // In memory, appended is held.
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Consumer>, LogError> {
        let mut state = self.lock();
        let mut watches = Vec::new();
        for t in topics {
            let topic = state
                .topics
                .get(t)
                .ok_or_else(|| LogError::UnknownTopic(t.clone()))?;
            watches.push(topic.changed.subscribe());
        }
        state.next_member += 1;
        let member = state.next_member;
        let State {
            groups,
            topics: all_topics,
            ..
        } = &mut *state;
        let g = groups.entry(group.to_owned()).or_default();
        for t in topics {
            if !g.topics.contains(t) {
                g.topics.push(t.clone());
            }
        }
        g.members.push(member);
        g.members.sort_unstable();
        g.rebalance(all_topics);
        let names = g.topics.clone();
        state.notify_topics(&names);
        Ok(Box::new(MemoryConsumer {
            log: self.clone(),
            group: group.to_owned(),
            member,
            generation: 0,
            positions: HashMap::new(),
            watches,
            cursor: 0,
        }))
    }

    async fn health(&self) -> Result<(), LogError> {
        Ok(())
    }

    async fn drained(&self, topics: &[String]) -> bool {
        topics
            .iter()
            .all(|t| self.retained(t).is_none_or(|n| n == 0))
    }
}

impl State {
    fn trim_unconsumed(&mut self, topic: &str) {
        let consumed = self
            .groups
            .values()
            .any(|g| g.topics.iter().any(|t| t == topic));
        if !consumed {
            self.trim(topic);
        }
    }
}

/// A member of a consumer group on a [`MemoryLog`].
struct MemoryConsumer {
    log: MemoryLog,
    group: String,
    member: u64,
    /// The group generation `positions` belongs to.
    generation: u64,
    /// Next offset to fetch, per assigned (topic, partition).
    positions: HashMap<(String, u32), u64>,
    watches: Vec<watch::Receiver<u64>>,
    /// Rotates the partition fetched first, for fairness.
    cursor: usize,
}

impl MemoryConsumer {
    fn fetch(&mut self, max: usize) -> Vec<Record> {
        let log = self.log.clone();
        let state = log.lock();
        let Some(g) = state.groups.get(&self.group) else {
            return Vec::new();
        };
        if g.generation != self.generation {
            self.generation = g.generation;
            let assigned = g.assignment.get(&self.member).cloned().unwrap_or_default();
            self.positions = assigned
                .into_iter()
                .map(|tp| {
                    let start = g.committed.get(&tp).copied();
                    (tp, start)
                })
                .map(|(tp, start)| {
                    let base = state
                        .topics
                        .get(&tp.0)
                        .and_then(|t| t.partitions.get(tp.1 as usize))
                        .map_or(0, |p| p.base);
                    (tp, start.unwrap_or(base).max(base))
                })
                .collect();
        }
        let mut keys: Vec<(String, u32)> = self.positions.keys().cloned().collect();
        keys.sort_unstable();
        if keys.is_empty() {
            return Vec::new();
        }
        self.cursor = (self.cursor + 1) % keys.len();
        keys.rotate_left(self.cursor);
        let mut out = Vec::new();
        for tp in keys {
            if out.len() >= max {
                break;
            }
            let Some(topic) = state.topics.get(&tp.0) else {
                continue;
            };
            let Some(part) = topic.partitions.get(tp.1 as usize) else {
                continue;
            };
            let pos = self.positions.get_mut(&tp).expect("key from positions");
            *pos = (*pos).max(part.base);
            while *pos < part.end() && out.len() < max {
                let (key, payload) = &part.records[(*pos - part.base) as usize];
                out.push(Record {
                    topic: topic.name.clone(),
                    partition: tp.1,
                    offset: *pos,
                    key: key.clone(),
                    payload: payload.clone(),
                });
                *pos += 1;
            }
        }
        out
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        loop {
            for w in &mut self.watches {
                w.borrow_and_update();
            }
            let batch = self.fetch(max.max(1));
            if !batch.is_empty() {
                return Ok(batch);
            }
            let changes = self.watches.iter_mut().map(|w| Box::pin(w.changed()));
            let (res, _, _) = futures::future::select_all(changes).await;
            if res.is_err() {
                return Err(LogError::Closed);
            }
        }
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), LogError> {
        let mut state = self.log.lock();
        let Some(g) = state.groups.get_mut(&self.group) else {
            return Ok(());
        };
        let mine = g.generation == self.generation;
        let mut touched = Vec::new();
        for (topic, partition, offset) in commit_positions(records) {
            let tp = (topic.to_string(), partition);
            // A member that lost the partition in a rebalance must not move the new
            // owner's offset: its records will be seen again, as the contract says.
            if !mine || !self.positions.contains_key(&tp) {
                continue;
            }
            let next = offset + 1;
            let entry = g.committed.entry(tp).or_insert(0);
            *entry = (*entry).max(next);
            if !touched.contains(&topic) {
                touched.push(topic);
            }
        }
        for t in touched {
            state.trim(&t);
        }
        Ok(())
    }

    fn record_lag(&mut self, group: &str) {
        let state = self.log.lock();
        for ((topic, partition), pos) in &self.positions {
            let end = state
                .topics
                .get(topic)
                .and_then(|t| t.partitions.get(*partition as usize))
                .map(Partition::end);
            if let Some(end) = end {
                crate::set_lag(group, topic, *partition, end.saturating_sub(*pos));
            }
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        let mut state = self.log.lock();
        let State { groups, topics, .. } = &mut *state;
        if let Some(g) = groups.get_mut(&self.group) {
            g.members.retain(|m| *m != self.member);
            g.rebalance(topics);
            let names = g.topics.clone();
            state.notify_topics(&names);
        }
    }
}
