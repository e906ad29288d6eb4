//! The WebSocket sessions this gateway node holds, and fan-out to them.

use crate::queue::{Push, QueueSender};
use axum::extract::ws::Utf8Bytes;
use chorus_core::{ConversationId, SessionId, UserId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

const SHARDS: usize = 32;

/// Something to write to one session: one shared allocation, however many sessions
/// it goes to, and a pointer wide in each session's queue.
#[derive(Clone, Debug)]
pub struct Outbound(Arc<Out>);

impl Outbound {
    /// Shares `out`.
    pub fn new(out: Out) -> Self {
        Self(Arc::new(out))
    }

    /// Any frame but a `message`, written as is.
    pub fn frame(text: Utf8Bytes) -> Self {
        Self::new(Out::Frame(text))
    }

    /// What to write.
    pub fn get(&self) -> &Out {
        &self.0
    }
}

/// What an [`Outbound`] holds.
#[derive(Debug)]
pub enum Out {
    /// A `message` frame: the session checks `seq` against what it has sent.
    Message {
        /// Its conversation.
        conversation_id: ConversationId,
        /// Its `seq`.
        seq: i64,
        /// The encoded frame.
        frame: Utf8Bytes,
    },
    /// A message the session's user is not given: its `seq` counts as written.
    Withheld {
        /// Its conversation.
        conversation_id: ConversationId,
        /// Its `seq`.
        seq: i64,
    },
    /// Any other frame, written as is.
    Frame(Utf8Bytes),
}

/// The handle fan-out uses to reach one session.
#[derive(Clone)]
pub struct SessionHandle {
    /// The session.
    pub id: SessionId,
    /// Its bounded outbound queue; when full, the session closes because it does not
    /// keep up.
    pub tx: QueueSender,
}

/// Queues `out` for one session; a full queue closes the session (it resumes with
/// `sync` when it reconnects).
fn push(h: &SessionHandle, out: &Outbound) -> bool {
    match h.tx.push(out.clone()) {
        Push::Queued => true,
        Push::Overflowed => {
            metrics::counter!("chorus_ws_overflow_closed_total").increment(1);
            false
        }
        Push::Dropped => false,
    }
}

/// Local sessions by user, sharded to keep connect storms and fan-out apart.
pub struct Sessions {
    shards: Vec<RwLock<HashMap<UserId, Vec<SessionHandle>>>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl Sessions {
    fn shard(&self, user: UserId) -> &RwLock<HashMap<UserId, Vec<SessionHandle>>> {
        &self.shards[(user.0.as_u128() % SHARDS as u128) as usize]
    }

    /// Adds a session of `user` unless the user holds `max` already here; returns
    /// whether it was added.
    pub fn insert(&self, user: UserId, handle: SessionHandle, max: usize) -> bool {
        let mut map = self.shard(user).write().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(user).or_default();
        if list.len() >= max {
            return false;
        }
        list.push(handle);
        true
    }

    /// Sessions of `user` held here.
    pub fn of(&self, user: UserId) -> usize {
        let map = self.shard(user).read().unwrap_or_else(|e| e.into_inner());
        map.get(&user).map_or(0, Vec::len)
    }

    /// Removes a session of `user`.
    pub fn remove(&self, user: UserId, session: SessionId) {
        let mut map = self.shard(user).write().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(&user) {
            list.retain(|h| h.id != session);
            if list.is_empty() {
                map.remove(&user);
            }
        }
    }

    /// Queues `out` for every session of `users` except `except`. A session whose
    /// queue is full is told to close (it resumes with `sync` when it reconnects);
    /// returns how many sessions got the frame.
    pub fn deliver(&self, users: &[UserId], out: &Outbound, except: Option<SessionId>) -> usize {
        let mut delivered = 0;
        for user in users {
            let map = self.shard(*user).read().unwrap_or_else(|e| e.into_inner());
            let Some(list) = map.get(user) else {
                continue;
            };
            for h in list {
                if Some(h.id) == except {
                    continue;
                }
                if push(h, out) {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    /// Queues `out` for one session of `user`, if this node holds it; returns whether
    /// it was queued.
    pub fn deliver_to_session(&self, user: UserId, session: SessionId, out: &Outbound) -> bool {
        let map = self.shard(user).read().unwrap_or_else(|e| e.into_inner());
        map.get(&user)
            .and_then(|list| list.iter().find(|h| h.id == session))
            .is_some_and(|h| push(h, out))
    }

    /// Every session held now, with its user.
    pub fn all(&self) -> Vec<(UserId, SessionId)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let map = shard.read().unwrap_or_else(|e| e.into_inner());
            for (user, list) in map.iter() {
                out.extend(list.iter().map(|h| (*user, h.id)));
            }
        }
        out
    }

    /// Sessions held now.
    pub fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum()
    }
}
