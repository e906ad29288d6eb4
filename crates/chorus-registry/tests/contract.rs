//! The `Registry` contract, one suite generated for every backend: `memory` always,
//! `redis` when `CHORUS_TEST_REDIS` names a server (e.g. `redis://127.0.0.1:6379/0`);
//! without it the Redis tests say they are skipped and pass. Each Redis test keeps its
//! keys under a prefix of its own, so they run in parallel on one server, and deletes
//! them when it passes. `redis_only` holds what only a shared backend does: expiry of
//! nodes that stop heartbeating, and reaping.

use chorus_core::{NodeId, SessionId, UserId};
use chorus_registry::Registry;
use chorus_registry::memory::MemoryRegistry;
use chorus_registry::redis::RedisRegistry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const REDIS_ENV: &str = "CHORUS_TEST_REDIS";

/// A registry under test, and the Redis keys to delete after it.
struct Fixture {
    registry: Arc<dyn Registry>,
    redis: Option<(String, String)>,
}

impl Fixture {
    fn memory() -> Self {
        Self {
            registry: Arc::new(MemoryRegistry::new()),
            redis: None,
        }
    }

    /// A Redis registry with a fresh prefix, or `None` (said on stderr) without Redis.
    async fn redis(test: &str, node_ttl: Duration) -> Option<Self> {
        let Ok(url) = std::env::var(REDIS_ENV) else {
            eprintln!("{test}: skipped, set {REDIS_ENV}=redis://HOST:PORT/DB to run it");
            return None;
        };
        let prefix = format!("chorus-test:{}", uuid::Uuid::now_v7());
        let registry = RedisRegistry::connect(&url, &prefix, node_ttl)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Some(Self {
            registry: Arc::new(registry),
            redis: Some((url, prefix)),
        })
    }

    /// Another connection to the same Redis keys (a registry of another node).
    async fn another(&self, node_ttl: Duration) -> Arc<dyn Registry> {
        let (url, prefix) = self.redis.as_ref().expect("a Redis fixture");
        Arc::new(RedisRegistry::connect(url, prefix, node_ttl).await.unwrap())
    }

    /// Deletes the test's Redis keys.
    async fn cleanup(self) {
        let Some((url, prefix)) = self.redis else {
            return;
        };
        let client = ::redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            if !keys.is_empty() {
                ::redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await
                    .unwrap();
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

fn node(name: &str) -> NodeId {
    NodeId(name.into())
}

/// Generates `memory::$test` and `redis::$test` for each contract test `$test`.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let f = super::Fixture::memory();
                    super::$test(f.registry.clone()).await;
                    f.cleanup().await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let ttl = std::time::Duration::from_secs(10);
                    let Some(f) = super::Fixture::redis(stringify!($test), ttl).await else {
                        return;
                    };
                    super::$test(f.registry.clone()).await;
                    f.cleanup().await;
                }
            )*
        }
    };
}

contract!(
    presence_follows_the_first_and_last_session,
    locate_groups_users_by_node,
    registering_a_session_twice_counts_it_once,
    unregistering_an_unknown_session_changes_nothing,
    users_without_sessions_are_neither_located_nor_online,
    locate_drops_a_node_with_the_users_last_session_there,
    reap_leaves_live_nodes_alone,
    concurrent_sessions_come_online_once_and_go_offline_once,
    health_answers,
);

async fn presence_follows_the_first_and_last_session(r: Arc<dyn Registry>) {
    let (u, node) = (UserId::new(), node("n1"));
    let (s1, s2) = (SessionId::new(), SessionId::new());
    assert!(r.register(u, &node, s1).await.unwrap());
    assert!(!r.register(u, &node, s2).await.unwrap());
    assert_eq!(r.online(&[u]).await.unwrap(), vec![u]);
    assert!(!r.unregister(u, &node, s1).await.unwrap());
    assert!(r.unregister(u, &node, s2).await.unwrap());
    assert!(r.online(&[u]).await.unwrap().is_empty());
    assert!(
        !r.unregister(u, &node, s2).await.unwrap(),
        "second removal is a no-op"
    );
}

async fn locate_groups_users_by_node(r: Arc<dyn Registry>) {
    let (a, b, c) = (UserId::new(), UserId::new(), UserId::new());
    let (n1, n2) = (node("n1"), node("n2"));
    assert!(r.register(a, &n1, SessionId::new()).await.unwrap());
    assert!(!r.register(a, &n2, SessionId::new()).await.unwrap());
    assert!(r.register(b, &n1, SessionId::new()).await.unwrap());
    let found = r.locate(&[a, b, c]).await.unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[&n1], vec![a, b]);
    assert_eq!(found[&n2], vec![a]);
}

async fn registering_a_session_twice_counts_it_once(r: Arc<dyn Registry>) {
    let (u, n, s) = (UserId::new(), node("n1"), SessionId::new());
    assert!(r.register(u, &n, s).await.unwrap());
    assert!(
        !r.register(u, &n, s).await.unwrap(),
        "already online through this very session"
    );
    assert_eq!(
        r.locate(&[u]).await.unwrap(),
        HashMap::from([(n.clone(), vec![u])])
    );
    assert!(
        r.unregister(u, &n, s).await.unwrap(),
        "one removal takes it"
    );
    assert!(r.online(&[u]).await.unwrap().is_empty());
}

async fn unregistering_an_unknown_session_changes_nothing(r: Arc<dyn Registry>) {
    let (u, other, n, s) = (UserId::new(), UserId::new(), node("n1"), SessionId::new());
    assert!(r.register(u, &n, s).await.unwrap());
    assert!(!r.unregister(u, &n, SessionId::new()).await.unwrap());
    assert!(
        !r.unregister(other, &n, s).await.unwrap(),
        "not that user's session"
    );
    assert!(!r.unregister(other, &n, SessionId::new()).await.unwrap());
    assert_eq!(r.online(&[u, other]).await.unwrap(), vec![u]);
    assert_eq!(
        r.locate(&[u, other]).await.unwrap(),
        HashMap::from([(n, vec![u])])
    );
}

async fn users_without_sessions_are_neither_located_nor_online(r: Arc<dyn Registry>) {
    assert!(r.locate(&[]).await.unwrap().is_empty());
    assert!(r.online(&[]).await.unwrap().is_empty());
    let (a, b, c, d) = (UserId::new(), UserId::new(), UserId::new(), UserId::new());
    let n = node("n1");
    assert!(r.register(c, &n, SessionId::new()).await.unwrap());
    assert!(r.register(a, &n, SessionId::new()).await.unwrap());
    assert!(r.locate(&[b, d]).await.unwrap().is_empty());
    assert!(r.online(&[b, d]).await.unwrap().is_empty());
    assert_eq!(
        r.online(&[a, b, c, d]).await.unwrap(),
        vec![a, c],
        "in the order asked"
    );
    assert_eq!(
        r.locate(&[d, c, b, a]).await.unwrap(),
        HashMap::from([(n, vec![c, a])])
    );
}

async fn locate_drops_a_node_with_the_users_last_session_there(r: Arc<dyn Registry>) {
    let u = UserId::new();
    let (n1, n2) = (node("n1"), node("n2"));
    let (s1, s2, s3) = (SessionId::new(), SessionId::new(), SessionId::new());
    assert!(r.register(u, &n1, s1).await.unwrap());
    assert!(!r.register(u, &n1, s2).await.unwrap());
    assert!(!r.register(u, &n2, s3).await.unwrap());
    let both = HashMap::from([(n1.clone(), vec![u]), (n2.clone(), vec![u])]);
    assert_eq!(
        r.locate(&[u]).await.unwrap(),
        both,
        "once a node, however many sessions"
    );
    assert!(!r.unregister(u, &n1, s1).await.unwrap());
    assert_eq!(r.locate(&[u]).await.unwrap(), both);
    assert!(!r.unregister(u, &n1, s2).await.unwrap());
    assert_eq!(
        r.locate(&[u]).await.unwrap(),
        HashMap::from([(n2.clone(), vec![u])])
    );
    assert!(r.unregister(u, &n2, s3).await.unwrap());
    assert!(r.locate(&[u]).await.unwrap().is_empty());
}

async fn reap_leaves_live_nodes_alone(r: Arc<dyn Registry>) {
    let (u, n) = (UserId::new(), node("n1"));
    assert!(r.register(u, &n, SessionId::new()).await.unwrap());
    r.heartbeat(&n).await.unwrap();
    r.heartbeat(&node("n-without-sessions")).await.unwrap();
    assert!(r.reap().await.unwrap().is_empty());
    assert_eq!(r.online(&[u]).await.unwrap(), vec![u]);
    assert_eq!(r.locate(&[u]).await.unwrap(), HashMap::from([(n, vec![u])]));
}

async fn concurrent_sessions_come_online_once_and_go_offline_once(r: Arc<dyn Registry>) {
    let u = UserId::new();
    let sessions: Vec<(NodeId, SessionId)> = (0..32)
        .map(|i| (node(if i % 2 == 0 { "n1" } else { "n2" }), SessionId::new()))
        .collect();
    let registered = tokio::task::JoinSet::from_iter(sessions.iter().cloned().map(|(n, s)| {
        let r = r.clone();
        async move { r.register(u, &n, s).await.unwrap() }
    }))
    .join_all()
    .await;
    assert_eq!(
        registered.iter().filter(|online| **online).count(),
        1,
        "{registered:?}"
    );
    assert_eq!(r.locate(&[u]).await.unwrap().len(), 2);
    let unregistered = tokio::task::JoinSet::from_iter(sessions.into_iter().map(|(n, s)| {
        let r = r.clone();
        async move { r.unregister(u, &n, s).await.unwrap() }
    }))
    .join_all()
    .await;
    assert_eq!(
        unregistered.iter().filter(|offline| **offline).count(),
        1,
        "{unregistered:?}"
    );
    assert!(r.online(&[u]).await.unwrap().is_empty());
}

async fn health_answers(r: Arc<dyn Registry>) {
    r.health().await.unwrap();
}

/// Heartbeats `alive` and polls `locate(users)` until none of `dead` is in it: their
/// keys expire on Redis's clock, so there is nothing to wait on but time. Panics after
/// 10 s.
async fn wait_until_dead(r: &dyn Registry, dead: &[&NodeId], users: &[UserId], alive: &NodeId) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        r.heartbeat(alive).await.unwrap();
        let found = r.locate(users).await.unwrap();
        if dead.iter().all(|n| !found.contains_key(*n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dead:?} still located after 10 s: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

mod redis_only {
    use super::*;

    const TTL: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn connect_refuses_bad_settings() {
        assert!(RedisRegistry::connect("no-scheme", "p", TTL).await.is_err());
        assert!(
            RedisRegistry::connect("redis://127.0.0.1:6379/0", "p", Duration::ZERO)
                .await
                .is_err(),
            "a node TTL of zero would make every node dead"
        );
    }

    #[tokio::test]
    async fn a_node_that_stops_heartbeating_disappears() {
        let Some(f) = Fixture::redis("a_node_that_stops_heartbeating_disappears", TTL).await else {
            return;
        };
        let r = &*f.registry;
        let (dead, live) = (node("dead"), node("live"));
        let (a, b) = (UserId::new(), UserId::new());
        let b_live = SessionId::new();
        assert!(r.register(a, &dead, SessionId::new()).await.unwrap());
        assert!(r.register(b, &dead, SessionId::new()).await.unwrap());
        assert!(!r.register(b, &live, b_live).await.unwrap());
        assert_eq!(r.online(&[a, b]).await.unwrap(), vec![a, b]);

        wait_until_dead(r, &[&dead], &[a, b], &live).await;
        assert_eq!(
            r.locate(&[a, b]).await.unwrap(),
            HashMap::from([(live.clone(), vec![b])])
        );
        assert_eq!(r.online(&[a, b]).await.unwrap(), vec![b]);
        assert!(
            r.register(a, &live, SessionId::new()).await.unwrap(),
            "a session on a dead node does not keep its user online"
        );
        assert!(
            r.unregister(b, &live, b_live).await.unwrap(),
            "nor does it stop the user going offline"
        );
        assert_eq!(r.online(&[a, b]).await.unwrap(), vec![a]);
        assert!(
            r.reap().await.unwrap().is_empty(),
            "b's going offline was reported by unregister, a is online"
        );
        f.cleanup().await;
    }

    #[tokio::test]
    async fn heartbeats_keep_a_node_alive() {
        let Some(f) = Fixture::redis("heartbeats_keep_a_node_alive", TTL).await else {
            return;
        };
        let r = &*f.registry;
        let (u, n) = (UserId::new(), node("n1"));
        assert!(r.register(u, &n, SessionId::new()).await.unwrap());
        let mut tick = tokio::time::interval(TTL / 4);
        for _ in 0..10 {
            tick.tick().await;
            r.heartbeat(&n).await.unwrap();
        }
        assert_eq!(r.locate(&[u]).await.unwrap(), HashMap::from([(n, vec![u])]));
        assert!(r.reap().await.unwrap().is_empty());
        assert_eq!(r.online(&[u]).await.unwrap(), vec![u]);
        f.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reapers_report_each_offline_user_once() {
        let Some(f) = Fixture::redis("concurrent_reapers_report_each_offline_user_once", TTL).await
        else {
            return;
        };
        let r = &*f.registry;
        let (dead, other_dead, live) = (node("dead"), node("other-dead"), node("live"));
        // More sessions than one reaping step takes, so that the reapers interleave.
        let solo: Vec<UserId> = (0..2500).map(|_| UserId::new()).collect();
        for u in &solo {
            r.register(*u, &dead, SessionId::new()).await.unwrap();
        }
        let (several, also_live, two_dead) = (UserId::new(), UserId::new(), UserId::new());
        for _ in 0..3 {
            r.register(several, &dead, SessionId::new()).await.unwrap();
        }
        r.register(also_live, &dead, SessionId::new())
            .await
            .unwrap();
        r.register(also_live, &live, SessionId::new())
            .await
            .unwrap();
        r.register(two_dead, &dead, SessionId::new()).await.unwrap();
        r.register(two_dead, &other_dead, SessionId::new())
            .await
            .unwrap();

        wait_until_dead(r, &[&dead, &other_dead], &[solo[0], two_dead], &live).await;
        let reapers = [f.registry.clone(), f.another(TTL).await];
        let reaped = tokio::task::JoinSet::from_iter(
            reapers
                .iter()
                .cloned()
                .map(|r| async move { r.reap().await.unwrap() }),
        )
        .join_all()
        .await;
        let mut reaped: Vec<UserId> = reaped.into_iter().flatten().collect();
        reaped.sort_unstable();
        let mut expected = solo.clone();
        expected.extend([several, two_dead]);
        expected.sort_unstable();
        assert_eq!(reaped.len(), expected.len(), "no user twice, none missing");
        assert_eq!(
            reaped, expected,
            "and not {also_live}, still on a live node"
        );

        for r in &reapers {
            assert!(r.reap().await.unwrap().is_empty(), "nothing left to reap");
        }
        r.heartbeat(&live).await.unwrap();
        let mut everyone = solo;
        everyone.extend([several, also_live, two_dead]);
        assert_eq!(r.online(&everyone).await.unwrap(), vec![also_live]);
        assert_eq!(
            r.locate(&everyone).await.unwrap(),
            HashMap::from([(live, vec![also_live])])
        );
        f.cleanup().await;
    }
}
