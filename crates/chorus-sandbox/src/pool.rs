//! Idle instances by key, with a bound on their total number (least recently used out).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::instance::Instance;

/// Idle instances. Each key's list is ordered by when the instance was put back, most
/// recent last: `take` reuses the most recent one (whose module state is the latest),
/// eviction drops the oldest overall.
pub(crate) struct Pool {
    idle: HashMap<Arc<str>, Vec<Idle>>,
    /// Stamp of each idle instance, oldest first, with its key.
    order: BTreeMap<u64, Arc<str>>,
    next_stamp: u64,
    len: usize,
    bytes: usize,
    max: usize,
}

struct Idle {
    stamp: u64,
    instance: Instance,
}

impl Pool {
    /// An empty pool keeping at most `max` idle instances.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            idle: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            len: 0,
            bytes: 0,
            max,
        }
    }

    /// Idle instances.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes the idle instances were last measured to use.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most recently used idle instance of `key`.
    pub(crate) fn take(&mut self, key: &str) -> Option<Instance> {
        let list = self.idle.get_mut(key)?;
        let idle = list.pop()?;
        if list.is_empty() {
            self.idle.remove(key);
        }
        self.order.remove(&idle.stamp);
        self.len -= 1;
        self.bytes -= idle.instance.bytes();
        Some(idle.instance)
    }

    /// Keeps `instance` for `key`; returns the instances evicted to stay within the bound,
    /// for the caller to drop after releasing the lock (freeing a runtime takes a while).
    pub(crate) fn put(&mut self, key: &str, instance: Instance) -> Vec<Instance> {
        if self.max == 0 {
            return vec![instance];
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let key = match self.idle.get_key_value(key) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(key),
        };
        self.len += 1;
        self.bytes += instance.bytes();
        self.order.insert(stamp, Arc::clone(&key));
        self.idle
            .entry(key)
            .or_default()
            .push(Idle { stamp, instance });
        let mut evicted = Vec::new();
        while self.len > self.max {
            let Some((_, oldest_key)) = self.order.pop_first() else {
                break;
            };
            let Some(list) = self.idle.get_mut(&oldest_key) else {
                continue;
            };
            // Stamps grow, so a key's oldest instance is the first of its list.
            let idle = list.remove(0);
            if list.is_empty() {
                self.idle.remove(&oldest_key);
            }
            self.len -= 1;
            self.bytes -= idle.instance.bytes();
            evicted.push(idle.instance);
        }
        evicted
    }
}
