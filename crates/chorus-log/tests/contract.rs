//! The `EventLog` contract, one suite generated for every backend.

use chorus_log::{EventLog, Outgoing, Record};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Generous bound for "this arrives"; never a synchronisation sleep.
const ARRIVES: Duration = Duration::from_secs(30);

async fn next(consumer: &mut Box<dyn chorus_log::Consumer>, max: usize) -> Vec<Record> {
    tokio::time::timeout(ARRIVES, consumer.next_batch(max))
        .await
        .expect("records arrive")
        .expect("fetch succeeds")
}

async fn collect(consumer: &mut Box<dyn chorus_log::Consumer>, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(next(consumer, n - out.len()).await);
    }
    out
}

fn payloads(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect()
}

async fn publish_n(log: &dyn EventLog, topic: &str, key: &str, n: usize, tag: &str) {
    let records = (0..n)
        .map(|i| Outgoing::new(topic, key.as_bytes().to_vec(), format!("{tag}-{i}")))
        .collect();
    log.publish(records).await.unwrap();
}

macro_rules! contract_tests {
    ($backend:ident, $make:expr, split_is_immediate: $immediate:expr) => {
        mod $backend {
            use super::*;

            /// The backend, or `None` when its server is not configured (skipped).
            async fn log() -> Option<Arc<dyn EventLog>> {
                let log = $make.await;
                if log.is_none() {
                    eprintln!("{} backend not configured: skipped", stringify!($backend));
                }
                log
            }

            fn topic(name: &str) -> String {
                format!("t{}.{}", uuid::Uuid::now_v7().simple(), name)
            }

            #[tokio::test]
            async fn one_key_keeps_its_order() {
                let Some(log) = log().await else { return };
                let t = topic("order");
                log.create_topic(&t, 4).await.unwrap();
                let mut c = log
                    .subscribe(&format!("{t}.g"), std::slice::from_ref(&t))
                    .await
                    .unwrap();
                publish_n(&*log, &t, "conv-a", 50, "a").await;
                let got = collect(&mut c, 50).await;
                let expected: Vec<String> = (0..50).map(|i| format!("a-{i}")).collect();
                assert_eq!(payloads(&got), expected);
                let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
                assert!(offsets.windows(2).all(|w| w[0] < w[1]));
            }

            #[tokio::test]
            async fn publishing_to_a_missing_topic_fails() {
                let Some(log) = log().await else { return };
                let err = log
                    .publish(vec![Outgoing::new(topic("missing"), "k", "v")])
                    .await;
                assert!(err.is_err());
            }

            #[tokio::test]
            async fn uncommitted_records_are_seen_again_by_the_next_member() {
                let Some(log) = log().await else { return };
                let t = topic("redeliver");
                log.create_topic(&t, 2).await.unwrap();
                let mut first = log
                    .subscribe(&format!("{t}.g"), std::slice::from_ref(&t))
                    .await
                    .unwrap();
                publish_n(&*log, &t, "k", 10, "x").await;
                let got = collect(&mut first, 10).await;
                first.commit(&got[..4]).await.unwrap();
                drop(first);
                let mut second = log
                    .subscribe(&format!("{t}.g"), std::slice::from_ref(&t))
                    .await
                    .unwrap();
                let again = collect(&mut second, 6).await;
                let expected: Vec<String> = (4..10).map(|i| format!("x-{i}")).collect();
                assert_eq!(payloads(&again), expected);
            }

            #[tokio::test]
            async fn groups_are_independent() {
                let Some(log) = log().await else { return };
                let t = topic("groups");
                log.create_topic(&t, 3).await.unwrap();
                let mut a = log
                    .subscribe(&format!("{t}.ga"), std::slice::from_ref(&t))
                    .await
                    .unwrap();
                let mut b = log
                    .subscribe(&format!("{t}.gb"), std::slice::from_ref(&t))
                    .await
                    .unwrap();
                publish_n(&*log, &t, "k", 5, "m").await;
                assert_eq!(
                    payloads(&collect(&mut a, 5).await),
                    payloads(&collect(&mut b, 5).await)
                );
            }

            #[tokio::test]
            async fn members_split_partitions_and_see_everything_once() {
                let Some(log) = log().await else { return };
                let t = topic("split");
                log.create_topic(&t, 4).await.unwrap();
                let mut a = log
                    .subscribe(&format!("{t}.g"), std::slice::from_ref(&t))
                    .await
                    .unwrap();
                let mut b = log
                    .subscribe(&format!("{t}.g"), std::slice::from_ref(&t))
                    .await
                    .unwrap();
                let records: Vec<Outgoing> = (0..200)
                    .map(|i| {
                        Outgoing::new(&t, format!("key-{}", i % 20), format!("{}:{i}", i % 20))
                    })
                    .collect();
                log.publish(records).await.unwrap();
                let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
                let (mut from_a, mut from_b) = (0, 0);
                while from_a + from_b < 200 {
                    tokio::select! {
                        batch = a.next_batch(64) => {
                            let batch = batch.unwrap();
                            from_a += batch.len();
                            a.commit(&batch).await.unwrap();
                            for p in payloads(&batch) {
                                let (k, i) = p.split_once(':').unwrap();
                                seen.entry(k.into()).or_default().push(i.parse().unwrap());
                            }
                        }
                        batch = b.next_batch(64) => {
                            let batch = batch.unwrap();
                            from_b += batch.len();
                            b.commit(&batch).await.unwrap();
                            for p in payloads(&batch) {
                                let (k, i) = p.split_once(':').unwrap();
                                seen.entry(k.into()).or_default().push(i.parse().unwrap());
                            }
                        }
                        _ = tokio::time::sleep(ARRIVES) => panic!("records did not arrive"),
                    }
                }
                assert_eq!(from_a + from_b, 200);
                // A broker assigns partitions to a newcomer asynchronously; the first
                // member may have taken everything by then.
                if $immediate {
                    assert!(from_a > 0 && from_b > 0, "both members got partitions");
                }
                for (_, order) in seen {
                    assert_eq!(order.len(), 10);
                    assert!(order.windows(2).all(|w| w[0] < w[1]), "per-key order kept");
                }
            }
        }
    };
}

contract_tests!(
    memory,
    async { Some(Arc::new(chorus_log::memory::MemoryLog::new()) as Arc<dyn EventLog>) },
    split_is_immediate: true
);

contract_tests!(
    local,
    async {
        // Kept for the test process's life: the log writes there until then.
        let dir = tempfile::tempdir().unwrap().keep();
        Some(Arc::new(chorus_log::memory::MemoryLog::open(&dir, false).unwrap()) as Arc<dyn EventLog>)
    },
    split_is_immediate: true
);

contract_tests!(
    local_synced,
    async {
        let dir = tempfile::tempdir().unwrap().keep();
        Some(Arc::new(chorus_log::memory::MemoryLog::open(&dir, true).unwrap()) as Arc<dyn EventLog>)
    },
    split_is_immediate: true
);

#[cfg(feature = "kafka")]
contract_tests!(
    kafka,
    async {
        let url = std::env::var("CHORUS_TEST_KAFKA").ok()?;
        Some(Arc::new(chorus_log::kafka::KafkaLog::connect(&url).unwrap()) as Arc<dyn EventLog>)
    },
    split_is_immediate: false
);

#[tokio::test]
async fn memory_log_trims_what_every_group_committed() {
    let log = chorus_log::memory::MemoryLog::new();
    log.create_topic("trim", 1).await.unwrap();
    let mut a = log.subscribe("a", &["trim".into()]).await.unwrap();
    let mut b = log.subscribe("b", &["trim".into()]).await.unwrap();
    publish_n(&log, "trim", "k", 10, "r").await;
    let got_a = collect(&mut a, 10).await;
    a.commit(&got_a).await.unwrap();
    assert_eq!(
        log.retained("trim"),
        Some(10),
        "group b has committed nothing"
    );
    let got_b = collect(&mut b, 10).await;
    b.commit(&got_b[..7]).await.unwrap();
    assert_eq!(log.retained("trim"), Some(3));
}
