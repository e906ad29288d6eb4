//! The Redis registry: one registry shared by every node of a cluster.
//!
//! # Keys
//!
//! Every key starts with a prefix `P` (one per deployment; each test uses its own, so
//! tests can share one Redis):
//!
//! | key                  | type                   | holds                                      |
//! |----------------------|------------------------|--------------------------------------------|
//! | `P:node:{node}`      | string, TTL `node_ttl` | exists while the node is alive             |
//! | `P:nodes`            | set                    | the nodes that heartbeated, until reaped   |
//! | `P:user:{user}`      | hash                   | session id → node id, one field a session  |
//! | `P:sessions:{node}`  | set                    | `{user}/{session}` of the node's sessions  |
//!
//! # Liveness
//!
//! A node is alive while its key exists. [`Registry::heartbeat`] sets the key with a
//! time to live of `node_ttl` (chorus uses 10 s and heartbeats every 3 s, so two missed
//! heartbeats are tolerated) and adds the node to `P:nodes`; `register` does the same
//! if the key is missing, since a node that registers a session is alive. From the
//! moment a node's key expires, its sessions no longer count anywhere: `locate` and
//! `online` skip them and `register`/`unregister` answer as if they were gone, whether
//! or not they have been reaped yet.
//!
//! # Atomicity
//!
//! `register`, `unregister`, `locate`/`online` and each step of `reap` are Lua scripts,
//! each one round trip, and Redis runs one script at a time, so every check-and-change
//! is atomic. Whenever a script decides whether a user is online it also deletes that
//! user's sessions on dead nodes ("pruning"). The user's going offline is therefore
//! reported exactly once: whichever of `unregister` or `reap` first finds them with no
//! session on a live node reports it, and removes the dead sessions that a later reap
//! would otherwise report again.
//!
//! # Reaping
//!
//! `reap` lists the nodes of `P:nodes` whose key is gone, then for each one runs a
//! script that pops up to 1000 members of its sessions set (`SPOP`: two concurrent
//! reapers never get the same session), deletes those that the user's hash still maps
//! to that node, and returns the users left with no session on a live node.
//! It repeats until the set is empty, then drops the node from `P:nodes`; it stops early
//! if the node came back. Chunks bound how long one script blocks Redis. If a step
//! fails after others succeeded, `reap` returns the users found so far (they are gone
//! from Redis and would not be reported again) and the next `reap` does the rest.
//!
//! A node that comes back before it is reaped (a long pause, a partition) finds its
//! sessions counted again; once reaped they stay gone, so a node whose heartbeats
//! failed for longer than `node_ttl` must consider its sessions forgotten.
//!
//! # Deployment
//!
//! One Redis server (5 or later; a primary with replicas is fine), addressed as
//! `redis://HOST:PORT/DB`. Not Redis Cluster: the scripts reach keys of other users and
//! nodes than the ones they are given, which a cluster would refuse as cross-slot.
//! Connections are held by a [`ConnectionManager`], which reconnects by itself; a call
//! made while Redis is unreachable fails with [`RegistryError::Backend`].

use crate::{Registry, RegistryError, Result};
use async_trait::async_trait;
use chorus_core::{NodeId, SessionId, UserId};
use redis::Script;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::time::Duration;

/// How many sessions of a dead node one reaping script removes at most.
const REAP_CHUNK: usize = 1000;

/// Lua shared by the scripts. `ARGV[1]` is always the key prefix with its colon.
const PRELUDE: &str = r#"
local prefix = ARGV[1]
local live = {}
local function alive(node)
  local v = live[node]
  if v == nil then
    v = redis.call('EXISTS', prefix .. 'node:' .. node) == 1
    live[node] = v
  end
  return v
end
-- Deletes the sessions of a user's hash that are on dead nodes; true if one on a
-- live node remains.
local function prune(hash)
  local fields = redis.call('HGETALL', hash)
  local online = false
  for i = 1, #fields, 2 do
    if alive(fields[i + 1]) then
      online = true
    else
      redis.call('HDEL', hash, fields[i])
    end
  end
  return online
end
"#;

/// KEYS: user hash, node key, node sessions, nodes set.
/// ARGV: prefix, node, session, `user/session`, ttl in ms.
/// Returns 1 if the user had no session on a live node before.
const REGISTER: &str = r#"
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5], 'NX')
redis.call('SADD', KEYS[4], ARGV[2])
local prev = redis.call('HGET', KEYS[1], ARGV[3])
if prev and prev ~= ARGV[2] then
  redis.call('SREM', prefix .. 'sessions:' .. prev, ARGV[4])
end
local was_online = prune(KEYS[1])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
if was_online then return 0 end
return 1
"#;

/// KEYS: user hash, node sessions. ARGV: prefix, session, `user/session`.
/// Returns 1 if the session existed and the user has no session on a live node left.
const UNREGISTER: &str = r#"
redis.call('SREM', KEYS[2], ARGV[3])
local node = redis.call('HGET', KEYS[1], ARGV[2])
if not node then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('SREM', prefix .. 'sessions:' .. node, ARGV[3])
if prune(KEYS[1]) then return 0 end
return 1
"#;

/// KEYS: user hashes. ARGV: prefix.
/// Returns, for each user in order, the distinct live nodes holding their sessions.
const LOCATE: &str = r#"
local out = {}
for i, hash in ipairs(KEYS) do
  local nodes, seen = {}, {}
  for _, node in ipairs(redis.call('HVALS', hash)) do
    if not seen[node] then
      seen[node] = true
      if alive(node) then table.insert(nodes, node) end
    end
  end
  out[i] = nodes
end
return out
"#;

/// KEYS: nodes set. ARGV: prefix. Returns the nodes whose key is gone.
const DEAD_NODES: &str = r#"
local dead = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not alive(node) then table.insert(dead, node) end
end
return dead
"#;

/// KEYS: node key, node sessions, nodes set. ARGV: prefix, node, chunk size.
/// Returns {done, users now offline}; done is 1 once nothing is left to reap.
const REAP_NODE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, {}} end
local offline = {}
for _, member in ipairs(redis.call('SPOP', KEYS[2], ARGV[3])) do
  local slash = string.find(member, '/', 1, true)
  if slash then
    local user = string.sub(member, 1, slash - 1)
    local hash = prefix .. 'user:' .. user
    local session = string.sub(member, slash + 1)
    if redis.call('HGET', hash, session) == ARGV[2] then
      redis.call('HDEL', hash, session)
      if not prune(hash) then table.insert(offline, user) end
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, offline} end
redis.call('SREM', KEYS[3], ARGV[2])
return {1, offline}
"#;

fn backend(e: redis::RedisError) -> RegistryError {
    RegistryError::Backend(Box::new(e))
}

fn parse_user(s: &str) -> Result<UserId> {
    s.parse()
        .map_err(|_| RegistryError::Malformed(s.to_owned()))
}

/// Sessions of a cluster, in Redis, with node heartbeats and expiry.
pub struct RedisRegistry {
    conn: ConnectionManager,
    /// The key prefix followed by `:`.
    prefix: String,
    node_ttl_ms: u64,
    register: Script,
    unregister: Script,
    locate: Script,
    dead_nodes: Script,
    reap_node: Script,
}

impl RedisRegistry {
    /// Connects to the Redis at `url` (`redis://HOST:PORT/DB`), keeping keys under
    /// `prefix`; a node is dead once `node_ttl` has passed since its last heartbeat.
    pub async fn connect(url: &str, prefix: &str, node_ttl: Duration) -> Result<Self> {
        let node_ttl_ms = u64::try_from(node_ttl.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                RegistryError::Settings(format!("node TTL {node_ttl:?} is not a positive ms count"))
            })?;
        let client = redis::Client::open(url).map_err(backend)?;
        let conn = ConnectionManager::new(client).await.map_err(backend)?;
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Ok(Self {
            conn,
            prefix: format!("{prefix}:"),
            node_ttl_ms,
            register: script(REGISTER),
            unregister: script(UNREGISTER),
            locate: script(LOCATE),
            dead_nodes: script(DEAD_NODES),
            reap_node: script(REAP_NODE),
        })
    }

    fn node_key(&self, node: &NodeId) -> String {
        format!("{}node:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    fn user_key(&self, user: UserId) -> String {
        format!("{}user:{user}", self.prefix)
    }

    fn sessions_key(&self, node: &NodeId) -> String {
        format!("{}sessions:{node}", self.prefix)
    }

    /// For each of `users`, in order, the live nodes holding their sessions.
    async fn live_nodes(&self, users: &[UserId]) -> Result<Vec<Vec<String>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.locate.arg(&self.prefix);
        for u in users {
            call.key(self.user_key(*u));
        }
        call.invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn register(&self, user: UserId, node: &NodeId, session: SessionId) -> Result<bool> {
        let came_online: i64 = self
            .register
            .key(self.user_key(user))
            .key(self.node_key(node))
            .key(self.sessions_key(node))
            .key(self.nodes_key())
            .arg(&self.prefix)
            .arg(&node.0)
            .arg(session.to_string())
            .arg(format!("{user}/{session}"))
            .arg(self.node_ttl_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        Ok(came_online == 1)
    }

    async fn unregister(&self, user: UserId, node: &NodeId, session: SessionId) -> Result<bool> {
        let went_offline: i64 = self
            .unregister
            .key(self.user_key(user))
            .key(self.sessions_key(node))
            .arg(&self.prefix)
            .arg(session.to_string())
            .arg(format!("{user}/{session}"))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(backend)?;
        Ok(went_offline == 1)
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<()> {
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.node_key(node))
            .arg(1)
            .arg("PX")
            .arg(self.node_ttl_ms)
            .ignore()
            .sadd(self.nodes_key(), &node.0)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(backend)
    }

    async fn reap(&self) -> Result<Vec<UserId>> {
        let mut conn = self.conn.clone();
        let dead: Vec<String> = self
            .dead_nodes
            .key(self.nodes_key())
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        let mut offline = Vec::new();
        for node in dead.into_iter().map(NodeId) {
            loop {
                let step: redis::RedisResult<(i64, Vec<String>)> = self
                    .reap_node
                    .key(self.node_key(&node))
                    .key(self.sessions_key(&node))
                    .key(self.nodes_key())
                    .arg(&self.prefix)
                    .arg(&node.0)
                    .arg(REAP_CHUNK)
                    .invoke_async(&mut conn)
                    .await;
                let (done, users) = match step {
                    Ok(step) => step,
                    // Those reaped so far are gone from Redis: report them now and
                    // leave the rest (the node is still listed) to the next reap.
                    Err(_) if !offline.is_empty() => return Ok(offline),
                    Err(e) => return Err(backend(e)),
                };
                for u in users {
                    offline.push(parse_user(&u)?);
                }
                if done == 1 {
                    break;
                }
            }
        }
        Ok(offline)
    }

    async fn locate(&self, users: &[UserId]) -> Result<HashMap<NodeId, Vec<UserId>>> {
        let mut out: HashMap<NodeId, Vec<UserId>> = HashMap::new();
        for (user, nodes) in users.iter().zip(self.live_nodes(users).await?) {
            for node in nodes {
                out.entry(NodeId(node)).or_default().push(*user);
            }
        }
        Ok(out)
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<UserId>> {
        Ok(users
            .iter()
            .zip(self.live_nodes(users).await?)
            .filter(|(_, nodes)| !nodes.is_empty())
            .map(|(user, _)| *user)
            .collect())
    }

    async fn health(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(backend)
    }
}
