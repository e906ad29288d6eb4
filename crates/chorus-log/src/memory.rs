//! The in-process event log: partitions in memory, consumer groups with committed
//! offsets and rebalancing, retention up to the slowest group's committed offset.
//!
//! It keeps the same contract as Kafka so that every role and test runs unchanged on
//! either. Opened on a directory ([`MemoryLog::open`], `local://`, the embedded
//! default) it is durable: every change is written to a journal there before a publish
//! returns ([`crate::journal`]), and the log is read back from it when the process
//! starts again, consumer groups' offsets included. Made with [`MemoryLog::new`]
//! (`memory://`) it is not: records not yet committed by their consumers are lost if
//! the process dies.

use crate::journal::{self, Encoder, End, Entry, Segment};
use crate::{
    Consumer, EventLog, LogError, Outgoing, Pending, Record, commit_positions, partition_for,
};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc};
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
    /// The journal of a durable log.
    journal: Option<Journal>,
}

/// Highest record offset per partition written in a segment.
type SegmentRecords = HashMap<(Arc<str>, u32), u64>;

/// A durable log's journal, as the log sees it.
struct Journal {
    encoder: Encoder,
    book: Book,
    sink: Sink,
}

/// Which records each segment holds: a segment is removed once every one of them is
/// committed by every group reading it.
#[derive(Default)]
struct Book {
    /// The segment being written.
    open: SegmentRecords,
    /// Earlier segments still kept.
    closed: Vec<(u64, SegmentRecords)>,
}

impl Book {
    /// The segment `number` is full: its records move to the closed ones.
    fn close(&mut self, number: u64) {
        let records = std::mem::take(&mut self.open);
        self.closed.push((number, records));
    }

    /// Forgets the closed segments whose records are all committed; returns them.
    fn unneeded(&mut self, topics: &HashMap<String, Topic>) -> Vec<u64> {
        let mut unneeded = Vec::new();
        self.closed.retain(|(number, records)| {
            let committed = records.iter().all(|((topic, p), last)| {
                topics
                    .get(&**topic)
                    .and_then(|t| t.partitions.get(*p as usize))
                    .is_none_or(|part| part.base > *last)
            });
            if committed {
                unneeded.push(*number);
            }
            !committed
        });
        unneeded
    }
}

/// Where the journal's bytes go.
enum Sink {
    /// Written by whoever appends, under the log's lock: handing a write to the
    /// operating system's cache costs less than waking another thread for it (25 us of
    /// CPU per message at 5,000 msg/s with a writer thread).
    Inline { files: journal::Files, failed: bool },
    /// Synced to the disk by a thread of its own: a sync takes milliseconds, and
    /// every append waiting meanwhile shares the next one (group commit).
    Synced {
        /// Rings the writer: something is waiting in the encoder.
        bell: mpsc::SyncSender<()>,
        /// How far the writer has got.
        written: watch::Receiver<Written>,
    },
}

/// How far the journal's writer thread has got.
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    /// Bytes of the encoder's stream written and synced.
    upto: u64,
    /// A write failed: nothing more will be written.
    failed: bool,
}

impl Journal {
    /// Whether a write failed (nothing more is written then).
    fn failed(&self) -> bool {
        match &self.sink {
            Sink::Inline { failed, .. } => *failed,
            Sink::Synced { written, .. } => written.borrow().failed,
        }
    }
}

/// The journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("journal {}: {what}: {source}", dir.display())]
struct JournalIo {
    dir: std::path::PathBuf,
    what: &'static str,
    source: std::io::Error,
}

fn journal_failed() -> LogError {
    LogError::Backend("the log's journal could not be written (see the node's log)".into())
}

/// What a new segment starts with: enough to read the log back from it alone, once
/// the segments before it hold nothing uncommitted.
fn checkpoint(topics: &HashMap<String, Topic>, groups: &HashMap<String, Group>) -> Vec<u8> {
    let mut e = Encoder::default();
    e.topics(topics.keys().map(String::as_str));
    for t in topics.values() {
        e.topic(&t.name, t.partitions.len() as u32);
        for (p, part) in t.partitions.iter().enumerate() {
            e.partition_end(&t.name, p as u32, part.end());
        }
    }
    for (name, g) in groups {
        for topic in &g.topics {
            e.reads(name, topic);
        }
        for ((topic, partition), next) in &g.committed {
            e.commit(name, topic, *partition, *next);
        }
    }
    e.take()
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
    /// An empty log, in memory only.
    pub fn new() -> Self {
        Self::default()
    }

    /// The durable log whose journal is in `dir` (created if missing), read back from
    /// it. With `sync`, every write of the journal is synced to the disk before the
    /// publishes it holds return (what survives a power loss); without, it is handed to
    /// the operating system (what survives the process being killed).
    pub fn open(dir: &Path, sync: bool) -> Result<Self, LogError> {
        Self::open_with(dir, sync, journal::SEGMENT_BYTES)
    }

    /// [`MemoryLog::open`] with segments of `segment_bytes`.
    fn open_with(dir: &Path, sync: bool, segment_bytes: u64) -> Result<Self, LogError> {
        let io = |what: &'static str, source: std::io::Error| {
            LogError::Backend(Box::new(JournalIo {
                dir: dir.to_owned(),
                what,
                source,
            }))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("creating it", e))?;
        let segments = journal::segments(dir).map_err(|e| io("listing it", e))?;
        let mut state = State::default();
        let mut closed = Vec::new();
        let mut open = (0, SegmentRecords::new(), 0);
        for (i, (number, path)) in segments.iter().enumerate() {
            let mut records = SegmentRecords::new();
            let end = journal::read_segment(path, |entry| state.apply(entry, &mut records))
                .map_err(|e| io("reading it", e))?;
            let last = i + 1 == segments.len();
            let at = match end {
                End::Clean => std::fs::metadata(path)
                    .map_err(|e| io("reading it", e))?
                    .len(),
                // What a crash left half-written at the end: cut off below.
                End::Torn(at) if last => {
                    tracing::warn!(segment = %path.display(), at, "journal: an interrupted write is cut off");
                    at
                }
                End::Torn(at) => {
                    return Err(LogError::Backend(
                        format!(
                            "journal segment {} is damaged at byte {at}; restore it or remove the journal (losing what it holds)",
                            path.display()
                        )
                        .into(),
                    ));
                }
            };
            if last {
                open = (*number, records, at);
            } else {
                closed.push((*number, records));
            }
        }
        let names: Vec<String> = state.topics.keys().cloned().collect();
        for name in &names {
            state.trim(name);
        }
        let (number, records, at) = open;
        let segment =
            Segment::open(dir, number, at, sync).map_err(|e| io("opening a segment", e))?;
        let files = journal::Files::new(dir.to_owned(), segment, segment_bytes);
        let book = Book {
            open: records,
            closed,
        };
        if !sync {
            state.journal = Some(Journal {
                encoder: Encoder::default(),
                book,
                sink: Sink::Inline {
                    files,
                    failed: false,
                },
            });
            return Ok(Self {
                state: Arc::new(Mutex::new(state)),
            });
        }
        let (bell, rung) = mpsc::sync_channel(1);
        let (written_tx, written) = watch::channel(Written::default());
        state.journal = Some(Journal {
            encoder: Encoder::default(),
            book,
            sink: Sink::Synced { bell, written },
        });
        let log = Self {
            state: Arc::new(Mutex::new(state)),
        };
        let writer = Writer {
            log: Arc::downgrade(&log.state),
            files,
            written: written_tx,
        };
        std::thread::Builder::new()
            .name("log-journal".into())
            .spawn(move || writer.run(&rung))
            .map_err(|e| io("starting its writer", e))?;
        Ok(log)
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
    /// Applies a journal entry read back; notes the records it holds in `records`.
    fn apply(&mut self, entry: Entry, records: &mut SegmentRecords) {
        match entry {
            Entry::Topic { name, partitions } => self.add_topic(&name, partitions),
            Entry::Deleted { name } => self.remove_topic(&name),
            Entry::Record {
                topic,
                partition,
                offset,
                key,
                payload,
            } => {
                let Some(t) = self.topics.get_mut(&topic) else {
                    return;
                };
                let Some(part) = t.partitions.get_mut(partition as usize) else {
                    return;
                };
                if offset < part.end() {
                    return;
                }
                if offset > part.end() {
                    // What came before was committed and its segment removed.
                    part.records.clear();
                    part.base = offset;
                }
                part.records.push_back((key, payload));
                records.insert((t.name.clone(), partition), offset);
            }
            Entry::Commit {
                group,
                topic,
                partition,
                next,
            } => {
                let g = self.groups.entry(group).or_default();
                if !g.topics.contains(&topic) {
                    g.topics.push(topic.clone());
                }
                let entry = g.committed.entry((topic, partition)).or_insert(0);
                *entry = (*entry).max(next);
            }
            Entry::PartitionEnd {
                topic,
                partition,
                end,
            } => {
                if let Some(part) = self
                    .topics
                    .get_mut(&topic)
                    .and_then(|t| t.partitions.get_mut(partition as usize))
                    && part.end() < end
                {
                    part.records.clear();
                    part.base = end;
                }
            }
            Entry::Reads { group, topic } => {
                let g = self.groups.entry(group).or_default();
                if !g.topics.contains(&topic) {
                    g.topics.push(topic);
                }
            }
            // Topics deleted in segments since removed.
            Entry::Topics { names } => {
                let gone: Vec<String> = self
                    .topics
                    .keys()
                    .filter(|t| !names.contains(t))
                    .cloned()
                    .collect();
                for topic in gone {
                    self.remove_topic(&topic);
                }
            }
        }
    }

    /// Hands what the journal's encoder holds to its sink; the future resolves once it
    /// is written (at once when written inline). Without a journal, nothing to do.
    fn flush(&mut self) -> Result<Pending, LogError> {
        let State {
            topics,
            groups,
            journal,
            ..
        } = self;
        let Some(j) = journal else {
            return Ok(Box::pin(std::future::ready(Ok(()))));
        };
        match &mut j.sink {
            Sink::Inline { files, failed } => {
                if *failed {
                    return Err(journal_failed());
                }
                let bytes = j.encoder.take();
                let mut write = || -> std::io::Result<()> {
                    files.append(&bytes)?;
                    if files.full() {
                        j.book.close(files.number());
                        files.start_next(&checkpoint(topics, groups))?;
                        files.remove(&j.book.unneeded(topics))?;
                    }
                    Ok(())
                };
                if let Err(e) = write() {
                    failure(files.dir(), &e);
                    *failed = true;
                    return Err(journal_failed());
                }
                Ok(Box::pin(std::future::ready(Ok(()))))
            }
            Sink::Synced { bell, written } => {
                if written.borrow().failed {
                    return Err(journal_failed());
                }
                // Full: the writer will find this too when it wakes.
                let _ = bell.try_send(());
                let target = j.encoder.position();
                let mut written = written.clone();
                Ok(Box::pin(async move {
                    let reached = written
                        .wait_for(|w| w.failed || w.upto >= target)
                        .await
                        .map_err(|_| LogError::Closed)?;
                    if reached.failed {
                        return Err(journal_failed());
                    }
                    Ok(())
                }))
            }
        }
    }

    fn add_topic(&mut self, topic: &str, partitions: u32) {
        if self.topics.contains_key(topic) {
            return;
        }
        let (changed, _) = watch::channel(0);
        self.topics.insert(
            topic.to_owned(),
            Topic {
                name: Arc::from(topic),
                partitions: (0..partitions.max(1))
                    .map(|_| Partition::default())
                    .collect(),
                changed,
            },
        );
        let State { groups, topics, .. } = self;
        for g in groups.values_mut() {
            if g.topics.iter().any(|t| t == topic) {
                g.rebalance(topics);
            }
        }
    }

    fn remove_topic(&mut self, topic: &str) {
        if let Some(t) = self.topics.remove(topic) {
            t.changed.send_modify(|v| *v += 1);
        }
        for g in self.groups.values_mut() {
            g.committed.retain(|(t, _), _| t != topic);
        }
    }

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
        let pending = {
            let mut state = self.lock();
            if state.topics.contains_key(topic) {
                return Ok(());
            }
            state.add_topic(topic, partitions);
            if let Some(j) = &mut state.journal {
                j.encoder.topic(topic, partitions.max(1));
            }
            state.flush()?
        };
        pending.await
    }

    async fn delete_topic(&self, topic: &str) -> Result<(), LogError> {
        let mut state = self.lock();
        state.remove_topic(topic);
        if let Some(j) = &mut state.journal {
            j.encoder.deleted(topic);
        }
        // A deletion lost in a crash is made again (a node deletes its own topic).
        drop(state.flush()?);
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
        if state.journal.as_ref().is_some_and(Journal::failed) {
            return Err(journal_failed());
        }
        let mut touched: Vec<String> = Vec::new();
        let State {
            topics, journal, ..
        } = &mut *state;
        for r in records {
            let t = topics.get_mut(&r.topic).expect("checked above");
            let p = partition_for(&r.key, t.partitions.len() as u32);
            let part = &mut t.partitions[p as usize];
            if let Some(j) = journal {
                let offset = part.end();
                j.encoder.record(&t.name, p, offset, &r.key, &r.payload);
                j.book.open.insert((t.name.clone(), p), offset);
            }
            part.records.push_back((r.key, r.payload));
            if !touched.contains(&r.topic) {
                touched.push(r.topic);
            }
        }
        for name in &touched {
            state.trim_unconsumed(name);
        }
        let written = state.flush();
        state.notify_topics(&touched);
        written
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
            journal,
            ..
        } = &mut *state;
        let g = groups.entry(group.to_owned()).or_default();
        for t in topics {
            if !g.topics.contains(t) {
                g.topics.push(t.clone());
                if let Some(j) = journal {
                    j.encoder.reads(group, t);
                }
            }
        }
        g.members.push(member);
        g.members.sort_unstable();
        g.rebalance(all_topics);
        let names = g.topics.clone();
        // Not waited for: a reader lost in a crash subscribes again on the next start.
        drop(state.flush()?);
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
        // A durable log keeps what is left for the next start.
        self.lock().journal.is_some()
            || topics
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
        let State {
            groups, journal, ..
        } = &mut *state;
        let Some(g) = groups.get_mut(&self.group) else {
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
            if let Some(j) = journal {
                j.encoder.commit(&self.group, &topic, partition, next);
            }
            if !touched.contains(&topic) {
                touched.push(topic);
            }
        }
        for t in touched {
            state.trim(&t);
        }
        // Not waited for: a commit lost in a crash only means its records come again.
        drop(state.flush()?);
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

/// The thread that writes and syncs a durable log's journal (`sync`).
struct Writer {
    log: Weak<Mutex<State>>,
    files: journal::Files,
    written: watch::Sender<Written>,
}

impl Writer {
    /// Writes what the log's journal holds each time the bell rings, until the log is
    /// dropped or a write fails.
    fn run(mut self, bell: &mpsc::Receiver<()>) {
        while bell.recv().is_ok() {
            let Some(log) = self.log.upgrade() else {
                return;
            };
            if let Err(e) = self.write(&log) {
                failure(self.files.dir(), &e);
                self.written.send_modify(|w| w.failed = true);
                return;
            }
        }
    }

    fn write(&mut self, log: &Mutex<State>) -> std::io::Result<()> {
        let lock = || log.lock().unwrap_or_else(|e| e.into_inner());
        let (bytes, upto) = {
            let mut state = lock();
            let j = state.journal.as_mut().expect("a durable log has a journal");
            (j.encoder.take(), j.encoder.position())
        };
        self.files.append(&bytes)?;
        if !self.files.full() {
            self.written.send_modify(|w| w.upto = upto);
            return Ok(());
        }
        // What was appended since belongs to this segment too; the checkpoint is the
        // state right after it.
        let (rest, upto, checkpoint) = {
            let mut state = lock();
            let State {
                topics,
                groups,
                journal,
                ..
            } = &mut *state;
            let j = journal.as_mut().expect("a durable log has a journal");
            j.book.close(self.files.number());
            (
                j.encoder.take(),
                j.encoder.position(),
                checkpoint(topics, groups),
            )
        };
        self.files.append(&rest)?;
        self.files.start_next(&checkpoint)?;
        let unneeded = {
            let mut state = lock();
            let State {
                topics, journal, ..
            } = &mut *state;
            let j = journal.as_mut().expect("a durable log has a journal");
            j.book.unneeded(topics)
        };
        self.files.remove(&unneeded)?;
        self.written.send_modify(|w| w.upto = upto);
        Ok(())
    }
}

fn failure(dir: &Path, e: &std::io::Error) {
    metrics::counter!("chorus_log_journal_failures_total").increment(1);
    tracing::error!(dir = %dir.display(), error = %e, "the log's journal could not be written: publishing fails from now on");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Consumer;

    async fn publish(log: &MemoryLog, topic: &str, from: usize, to: usize) {
        let records = (from..to)
            .map(|i| Outgoing::new(topic, format!("k{}", i % 3), format!("r{i}")))
            .collect();
        log.publish(records).await.unwrap();
    }

    async fn take(consumer: &mut Box<dyn Consumer>, n: usize) -> Vec<Record> {
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(consumer.next_batch(n - out.len()).await.unwrap());
        }
        out
    }

    fn payloads(records: &[Record]) -> Vec<String> {
        let mut out: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        out.sort_by_key(|p| p[1..].parse::<usize>().unwrap());
        out
    }

    fn names(from: usize, to: usize) -> Vec<String> {
        (from..to).map(|i| format!("r{i}")).collect()
    }

    /// Drops the log and waits until its writer has let go of the journal.
    fn close(log: MemoryLog) {
        let weak = Arc::downgrade(&log.state);
        drop(log);
        while weak.strong_count() > 0 {
            std::thread::yield_now();
        }
    }

    /// Runs `test` in a directory of its own twice: with the journal synced to the disk,
    /// and without.
    async fn synced_and_not<F: Future<Output = ()>>(test: impl Fn(tempfile::TempDir, bool) -> F) {
        for sync in [false, true] {
            test(tempfile::tempdir().unwrap(), sync).await;
        }
    }

    #[tokio::test]
    async fn records_topics_and_offsets_are_read_back_from_the_journal() {
        synced_and_not(read_back).await;
    }

    async fn read_back(dir: tempfile::TempDir, sync: bool) {
        let log = MemoryLog::open(dir.path(), sync).unwrap();
        log.create_topic("t", 3).await.unwrap();
        publish(&log, "t", 0, 100).await;
        let mut consumer = log.subscribe("g", &["t".into()]).await.unwrap();
        let first = take(&mut consumer, 100).await;
        let committed: Vec<Record> = first.iter().filter(|r| r.offset < 10).cloned().collect();
        consumer.commit(&committed).await.unwrap();
        // The commit is written before anything published after it.
        publish(&log, "t", 100, 110).await;
        drop(consumer);
        close(log);

        let log = MemoryLog::open(dir.path(), sync).unwrap();
        let mut consumer = log.subscribe("g", &["t".into()]).await.unwrap();
        let again = take(&mut consumer, 110 - committed.len()).await;
        let mut expected: Vec<String> = payloads(&first)
            .into_iter()
            .filter(|p| !payloads(&committed).contains(p))
            .collect();
        expected.extend(names(100, 110));
        assert_eq!(payloads(&again), expected);
        let mut other = log.subscribe("new", &["t".into()]).await.unwrap();
        assert_eq!(
            take(&mut other, 110 - committed.len()).await.len(),
            110 - committed.len(),
            "a new group starts at the earliest record kept: nothing committed by g is"
        );
    }

    #[tokio::test]
    async fn a_write_cut_short_at_the_end_is_dropped_and_the_journal_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = MemoryLog::open(dir.path(), false).unwrap();
        log.create_topic("t", 1).await.unwrap();
        publish(&log, "t", 0, 5).await;
        close(log);
        let (_, last) = journal::segments(dir.path()).unwrap().pop().unwrap();
        let mut file = OpenOptionsForTest::append(&last);
        std::io::Write::write_all(&mut file, &[42, 0, 0, 0, 1, 2]).unwrap();
        drop(file);

        let log = MemoryLog::open(dir.path(), false).unwrap();
        publish(&log, "t", 5, 8).await;
        close(log);
        let log = MemoryLog::open(dir.path(), false).unwrap();
        let mut consumer = log.subscribe("g", &["t".into()]).await.unwrap();
        assert_eq!(payloads(&take(&mut consumer, 8).await), names(0, 8));
    }

    #[tokio::test]
    async fn damage_before_the_end_refuses_to_open_rather_than_guess() {
        let dir = tempfile::tempdir().unwrap();
        let log = MemoryLog::open_with(dir.path(), false, 256).unwrap();
        log.create_topic("t", 1).await.unwrap();
        for i in 0..20 {
            publish(&log, "t", i * 5, i * 5 + 5).await;
        }
        close(log);
        let segments = journal::segments(dir.path()).unwrap();
        assert!(segments.len() > 2, "{segments:?}");
        let (_, first) = &segments[0];
        let mut bytes = std::fs::read(first).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(first, bytes).unwrap();
        let Err(e) = MemoryLog::open(dir.path(), false) else {
            panic!("a damaged journal opened");
        };
        assert!(e.to_string().contains("is damaged at byte"), "{e}");
    }

    #[tokio::test]
    async fn segments_whose_records_are_all_committed_are_removed() {
        synced_and_not(removed_when_committed).await;
    }

    async fn removed_when_committed(dir: tempfile::TempDir, sync: bool) {
        let log = MemoryLog::open_with(dir.path(), sync, 1024).unwrap();
        log.create_topic("t", 2).await.unwrap();
        log.create_topic("other", 1).await.unwrap();
        log.create_topic("gone", 1).await.unwrap();
        let mut consumer = log.subscribe("g", &["t".into()]).await.unwrap();
        // Never consumed: the dead-letter topic of a node, kept up to its bound.
        publish(&log, "other", 0, 1).await;
        for round in 0..50 {
            if round == 25 {
                log.delete_topic("gone").await.unwrap();
            }
            publish(&log, "t", round * 10, round * 10 + 10).await;
            let got = take(&mut consumer, 10).await;
            consumer.commit(&got).await.unwrap();
        }
        publish(&log, "t", 500, 510).await;
        let kept = journal::segments(dir.path()).unwrap();
        assert!(
            kept.len() < 10,
            "{} segments kept for 510 records, 500 of them committed",
            kept.len()
        );
        drop(consumer);
        close(log);
        let log = MemoryLog::open(dir.path(), false).unwrap();
        let mut consumer = log.subscribe("g", &["t".into()]).await.unwrap();
        assert_eq!(payloads(&take(&mut consumer, 10).await), names(500, 510));
        let mut dead = log.subscribe("dead", &["other".into()]).await.unwrap();
        assert_eq!(payloads(&take(&mut dead, 1).await), names(0, 1));
        // Created in the first segment (kept for "other"), deleted in one since
        // removed: the checkpoints of the later ones say it is gone.
        assert!(matches!(
            log.publish(vec![Outgoing::new("gone", "k", "x")]).await,
            Err(LogError::UnknownTopic(_))
        ));
    }

    /// Opens a file to append to it.
    struct OpenOptionsForTest;

    impl OpenOptionsForTest {
        fn append(path: &Path) -> std::fs::File {
            std::fs::OpenOptions::new().append(true).open(path).unwrap()
        }
    }
}
