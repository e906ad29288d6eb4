//! Backends by URL scheme: `memory://` and `kafka://` logs, `sqlite://` and
//! `postgres://` stores, `memory://` and `redis://` registries. A scheme that is not
//! compiled into this build is a clear error naming the cargo feature that adds it.

use anyhow::{Context, bail};
use chorus_log::EventLog;
use chorus_log::memory::MemoryLog;
use chorus_registry::Registry;
use chorus_registry::memory::MemoryRegistry;
use chorus_registry::redis::RedisRegistry;
use chorus_store::Store;
use chorus_store::postgres::PostgresStore;
use chorus_store::sqlite::SqliteStore;
use std::sync::Arc;
use std::time::Duration;

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(s, _)| s)
}

/// The event log at `url`.
pub async fn event_log(url: &str) -> anyhow::Result<Arc<dyn EventLog>> {
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryLog::new())),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(
            chorus_log::kafka::KafkaLog::connect(url)
                .with_context(|| format!("connecting to {url}"))?,
        )),
        #[cfg(not(feature = "kafka"))]
        "kafka" => {
            bail!("event log {url}: this build has no Kafka support (build with --features kafka)")
        }
        other => {
            bail!("event log {url}: unknown scheme `{other}` (expected memory:// or kafka://)")
        }
    }
}

/// The store at `url`, migrated to the current schema.
pub async fn store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    match scheme(url) {
        "sqlite" => {
            let store = SqliteStore::open_url(url)
                .await
                .with_context(|| format!("opening database {url}"))?;
            Ok(Arc::new(store))
        }
        "postgres" | "postgresql" => {
            let store = PostgresStore::connect(url)
                .await
                .with_context(|| format!("connecting to database {url}"))?;
            Ok(Arc::new(store))
        }
        other => {
            bail!("database {url}: unknown scheme `{other}` (expected sqlite:// or postgres://)")
        }
    }
}

/// How long a node's sessions outlive its last heartbeat in a shared registry.
pub const NODE_TTL: Duration = Duration::from_secs(10);

/// The registry at `url`; a shared one keeps its keys under `prefix`.
pub async fn registry(url: &str, prefix: &str) -> anyhow::Result<Arc<dyn Registry>> {
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryRegistry::new())),
        "redis" => Ok(Arc::new(
            RedisRegistry::connect(url, prefix, NODE_TTL)
                .await
                .with_context(|| format!("connecting to registry {url}"))?,
        )),
        other => bail!("registry {url}: unknown scheme `{other}` (expected memory:// or redis://)"),
    }
}
