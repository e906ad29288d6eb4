//! Idle instances by owner and key, within caps on their number and their bytes, in
//! total and per owner (least recently used out).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The bounds of a pool (see [`crate::SandboxConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Idle instances in total.
    pub(crate) instances: usize,
    /// Bytes of the idle instances in total.
    pub(crate) bytes: usize,
    /// Bytes of one owner's idle instances.
    pub(crate) owner_bytes: usize,
    /// Bytes of one instance: a larger one is not kept.
    pub(crate) instance_bytes: usize,
}

/// Idle instances (`T`: an instance, or anything in tests), each with the bytes it was
/// measured to use when it was put back.
///
/// Instances are kept per owner, then per key: `take` only ever hands an owner's
/// instance to the same owner, whatever the keys. Each key's list is ordered by when the
/// instance was put back, most recent last: `take` reuses the most recent one (whose
/// module state is the latest), eviction drops the oldest, of the owner when the owner
/// is over its cap, overall when the pool is.
pub(crate) struct Pool<T> {
    owners: HashMap<Arc<str>, Owner<T>>,
    /// Stamp of each idle instance, oldest first, with its owner.
    order: BTreeMap<u64, Arc<str>>,
    next_stamp: u64,
    len: usize,
    bytes: usize,
    caps: Caps,
}

/// One owner's idle instances.
struct Owner<T> {
    keys: HashMap<Arc<str>, Vec<Idle<T>>>,
    /// Stamp of each of the owner's idle instances, oldest first, with its key.
    order: BTreeMap<u64, Arc<str>>,
    bytes: usize,
}

struct Idle<T> {
    stamp: u64,
    bytes: usize,
    instance: T,
}

impl<T> Pool<T> {
    /// An empty pool within `caps`.
    pub(crate) fn new(caps: Caps) -> Self {
        Self {
            owners: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            len: 0,
            bytes: 0,
            caps,
        }
    }

    /// Idle instances.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the idle instances, as measured when each was put back.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most recently used idle instance of `owner` and `key`.
    pub(crate) fn take(&mut self, owner: &str, key: &str) -> Option<T> {
        let list = self.owners.get_mut(owner)?.keys.get_mut(key)?;
        let stamp = list.last()?.stamp;
        self.remove(owner, stamp)
    }

    /// Keeps `instance`, which uses `bytes`, for `owner` and `key`; returns the instances
    /// that are not kept: `instance` itself if it is larger than an instance may be,
    /// otherwise those evicted to stay within the caps, for the caller to drop after
    /// releasing the lock (freeing a runtime takes a while).
    pub(crate) fn put(&mut self, owner: &str, key: &str, bytes: usize, instance: T) -> Vec<T> {
        let caps = self.caps;
        if caps.instances == 0
            || bytes > caps.instance_bytes
            || bytes > caps.owner_bytes
            || bytes > caps.bytes
        {
            return vec![instance];
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let owner = match self.owners.get_key_value(owner) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(owner),
        };
        let entry = self
            .owners
            .entry(Arc::clone(&owner))
            .or_insert_with(|| Owner {
                keys: HashMap::new(),
                order: BTreeMap::new(),
                bytes: 0,
            });
        let key = match entry.keys.get_key_value(key) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(key),
        };
        entry.order.insert(stamp, Arc::clone(&key));
        entry.bytes += bytes;
        entry.keys.entry(key).or_default().push(Idle {
            stamp,
            bytes,
            instance,
        });
        self.order.insert(stamp, Arc::clone(&owner));
        self.len += 1;
        self.bytes += bytes;

        let mut evicted = Vec::new();
        // The owner's own oldest go first, so that one owner's instances never push out
        // another's; only then the oldest overall.
        while let Some(oldest) = self
            .owners
            .get(&owner)
            .filter(|o| o.bytes > caps.owner_bytes)
            .and_then(|o| o.order.first_key_value())
            .map(|(stamp, _)| *stamp)
        {
            evicted.extend(self.remove(&owner, oldest));
        }
        while self.len > caps.instances || self.bytes > caps.bytes {
            let Some((&oldest, oldest_owner)) = self.order.first_key_value() else {
                break;
            };
            let oldest_owner = Arc::clone(oldest_owner);
            evicted.extend(self.remove(&oldest_owner, oldest));
        }
        evicted
    }

    /// Takes the idle instance `stamp` of `owner` out of the pool.
    fn remove(&mut self, owner: &str, stamp: u64) -> Option<T> {
        let entry = self.owners.get_mut(owner)?;
        let key = entry.order.remove(&stamp)?;
        let list = entry.keys.get_mut(&key)?;
        let at = list.iter().position(|idle| idle.stamp == stamp)?;
        let idle = list.remove(at);
        if list.is_empty() {
            entry.keys.remove(&key);
        }
        entry.bytes -= idle.bytes;
        if entry.keys.is_empty() {
            self.owners.remove(owner);
        }
        self.order.remove(&stamp);
        self.len -= 1;
        self.bytes -= idle.bytes;
        Some(idle.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::{Caps, Pool};

    const KIB: usize = 1024;

    fn pool(
        instances: usize,
        bytes: usize,
        owner_bytes: usize,
        instance_bytes: usize,
    ) -> Pool<&'static str> {
        Pool::new(Caps {
            instances,
            bytes,
            owner_bytes,
            instance_bytes,
        })
    }

    #[test]
    fn the_least_recently_used_go_first_when_the_bytes_are_over_the_cap() {
        let mut pool = pool(100, 300 * KIB, 300 * KIB, 200 * KIB);
        assert!(pool.put("ada", "a", 100 * KIB, "a1").is_empty());
        assert!(pool.put("bob", "b", 100 * KIB, "b1").is_empty());
        assert!(pool.put("cy", "c", 100 * KIB, "c1").is_empty());
        assert_eq!((pool.len(), pool.bytes()), (3, 300 * KIB));
        // 150 KiB more: ada's and bob's, the oldest, make room.
        assert_eq!(pool.put("dee", "d", 150 * KIB, "d1"), ["a1", "b1"]);
        assert_eq!((pool.len(), pool.bytes()), (2, 250 * KIB));
        assert_eq!(pool.take("ada", "a"), None);
        assert_eq!(pool.take("cy", "c"), Some("c1"));
        assert_eq!(pool.take("dee", "d"), Some("d1"));
        assert_eq!((pool.len(), pool.bytes()), (0, 0));
    }

    #[test]
    fn an_owner_over_its_cap_loses_its_own_instances_not_others() {
        let mut pool = pool(100, 10_000 * KIB, 250 * KIB, 200 * KIB);
        assert!(pool.put("bob", "b", 100 * KIB, "bob's").is_empty());
        for (n, name) in ["m1", "m2", "m3", "m4"].into_iter().enumerate() {
            let evicted = pool.put("mallory", &format!("script:{n}"), 100 * KIB, name);
            // Mallory keeps two (200 KiB of her 250): her oldest go, never bob's.
            match n {
                0 | 1 => assert!(evicted.is_empty()),
                2 => assert_eq!(evicted, ["m1"]),
                _ => assert_eq!(evicted, ["m2"]),
            }
        }
        assert_eq!((pool.len(), pool.bytes()), (3, 300 * KIB));
        assert_eq!(pool.take("bob", "b"), Some("bob's"));
        assert_eq!(pool.take("mallory", "script:3"), Some("m4"));
    }

    #[test]
    fn an_instance_that_grew_beyond_the_threshold_is_not_kept() {
        let mut pool = pool(100, 10_000 * KIB, 10_000 * KIB, 200 * KIB);
        assert!(pool.put("ada", "a", 150 * KIB, "small").is_empty());
        assert_eq!(pool.put("ada", "a", 201 * KIB, "grown"), ["grown"]);
        assert_eq!((pool.len(), pool.bytes()), (1, 150 * KIB));
        assert_eq!(pool.take("ada", "a"), Some("small"));
        assert_eq!(pool.take("ada", "a"), None);
    }

    #[test]
    fn instances_go_back_to_their_owner_and_key_only_most_recent_first() {
        let mut pool = pool(100, 10_000 * KIB, 10_000 * KIB, 200 * KIB);
        pool.put("ada", "k", KIB, "ada 1");
        pool.put("ada", "k", KIB, "ada 2");
        pool.put("bob", "k", KIB, "bob 1");
        assert_eq!(pool.take("bob", "other"), None);
        assert_eq!(pool.take("ada", "k"), Some("ada 2"));
        assert_eq!(pool.take("bob", "k"), Some("bob 1"));
        assert_eq!(pool.take("bob", "k"), None);
        assert_eq!(pool.take("ada", "k"), Some("ada 1"));
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn the_count_cap_still_holds_and_zero_keeps_nothing() {
        let mut pool = pool(2, 10_000 * KIB, 10_000 * KIB, 200 * KIB);
        pool.put("ada", "a", KIB, "a");
        pool.put("bob", "b", KIB, "b");
        assert_eq!(pool.put("cy", "c", KIB, "c"), ["a"]);
        assert_eq!(pool.len(), 2);
        let mut none = self::pool(0, 10_000 * KIB, 10_000 * KIB, 200 * KIB);
        assert_eq!(none.put("ada", "a", KIB, "a"), ["a"]);
        assert_eq!((none.len(), none.bytes()), (0, 0));
    }
}
