//! A membership cache in front of the store.
//!
//! Every send asks "is the sender a member?" and every stored message asks "who are the
//! members?". Both are answered from memory; the cache is filled on first use and
//! entries are dropped when membership changes ([`Directory::invalidate`]), locally by
//! the gateway that made the change and, across nodes, by the notices it publishes.
//! Entries also expire after a while ([`Directory::with_ttl`]), so that a node that
//! missed a notice (a publish that failed, a consumer that skipped it) is wrong for
//! that long at most: a removed member does not keep access for ever.

use crate::{Automations, Result, Store};
use chorus_core::{ConversationId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cached conversations beyond which the cache starts over (bounds memory).
const CAPACITY: usize = 100_000;

/// How long an entry is trusted unless told otherwise.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Where the cache reads the time (tests bring their own).
pub(crate) type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The members of one conversation, sorted for lookups.
#[derive(Debug, Default)]
pub struct Members {
    sorted: Vec<UserId>,
}

impl Members {
    /// Members from a list in any order.
    pub fn new(mut ids: Vec<UserId>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        Self { sorted: ids }
    }

    /// Whether `user` is a member.
    pub fn contains(&self, user: UserId) -> bool {
        self.sorted.binary_search(&user).is_ok()
    }

    /// Every member.
    pub fn iter(&self) -> impl Iterator<Item = UserId> + '_ {
        self.sorted.iter().copied()
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// No members (the conversation does not exist, or everyone left).
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

/// Cached members and when they were read.
type Cache = HashMap<ConversationId, (Arc<Members>, Instant)>;

/// A [`Store`] with cached membership.
#[derive(Clone)]
pub struct Directory {
    store: Arc<dyn Store>,
    automations: Automations,
    cache: Arc<Mutex<Cache>>,
    /// Bumped by every invalidation: a fill that read the database before an
    /// invalidation must not insert what it read.
    epoch: Arc<AtomicU64>,
    ttl: Duration,
    clock: Clock,
}

impl Directory {
    /// A cache in front of `store` whose entries live 30 seconds.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_ttl(store, DEFAULT_TTL, Arc::new(Instant::now))
    }

    /// A cache in front of `store` whose entries live `ttl` by `clock`.
    pub fn with_ttl(store: Arc<dyn Store>, ttl: Duration, clock: Clock) -> Self {
        Self {
            automations: Automations::new(store.clone()),
            store,
            cache: Arc::default(),
            epoch: Arc::default(),
            ttl,
            clock,
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Users' enabled scripts and auto-replies.
    pub fn automations(&self) -> &Automations {
        &self.automations
    }

    /// The members of `conversation` (empty when it does not exist).
    pub async fn members(&self, conversation: ConversationId) -> Result<Arc<Members>> {
        let now = (self.clock)();
        if let Some((m, read)) = self.lock().get(&conversation)
            && now.saturating_duration_since(*read) < self.ttl
        {
            return Ok(m.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let members = Arc::new(Members::new(self.store.members(conversation).await?));
        let mut cache = self.lock();
        if self.epoch.load(Ordering::Acquire) == epoch {
            if cache.len() >= CAPACITY {
                cache.clear();
            }
            cache.insert(conversation, (members.clone(), now));
        }
        Ok(members)
    }

    /// Forgets the cached members of `conversation`.
    pub fn invalidate(&self, conversation: ConversationId) {
        let mut cache = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        cache.remove(&conversation);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
