//! The in-process registry: a map from user to sessions, for a single node.

use crate::{Registry, Result};
use async_trait::async_trait;
use chorus_core::{NodeId, SessionId, UserId};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Sessions of one process. Nothing expires: sessions leave when they close.
#[derive(Default)]
pub struct MemoryRegistry {
    sessions: Mutex<HashMap<UserId, Vec<(SessionId, NodeId)>>>,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Vec<(SessionId, NodeId)>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, user: UserId, node: &NodeId, session: SessionId) -> Result<bool> {
        let mut map = self.lock();
        let entry = map.entry(user).or_default();
        let was_offline = entry.is_empty();
        if !entry.iter().any(|(s, _)| *s == session) {
            entry.push((session, node.clone()));
        }
        Ok(was_offline)
    }

    async fn unregister(&self, user: UserId, _node: &NodeId, session: SessionId) -> Result<bool> {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(&user) else {
            return Ok(false);
        };
        let before = entry.len();
        entry.retain(|(s, _)| *s != session);
        let now_offline = before > 0 && entry.is_empty();
        if entry.is_empty() {
            map.remove(&user);
        }
        Ok(now_offline)
    }

    async fn heartbeat(&self, _node: &NodeId) -> Result<()> {
        Ok(())
    }

    async fn reap(&self) -> Result<Vec<UserId>> {
        // One process: its sessions end when it does.
        Ok(Vec::new())
    }

    async fn locate(&self, users: &[UserId]) -> Result<HashMap<NodeId, Vec<UserId>>> {
        let map = self.lock();
        let mut out: HashMap<NodeId, Vec<UserId>> = HashMap::new();
        for u in users {
            if let Some(sessions) = map.get(u) {
                let mut nodes: Vec<&NodeId> = sessions.iter().map(|(_, n)| n).collect();
                nodes.sort_unstable();
                nodes.dedup();
                for n in nodes {
                    out.entry(n.clone()).or_default().push(*u);
                }
            }
        }
        Ok(out)
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>> {
        let map = self.lock();
        Ok(users
            .iter()
            .copied()
            .filter(|u| map.contains_key(u))
            .collect())
    }

    async fn health(&self) -> Result<()> {
        Ok(())
    }
}
