//! Backends by URL scheme: `memory://` and `kafka://` logs, `sqlite://` and
//! `postgres://` stores, `memory://` and `redis://` registries. A scheme that is not
//! compiled into this build is a clear error naming the cargo feature that adds it.

use anyhow::{Context, bail};
use chorus_log::EventLog;
use chorus_log::memory::MemoryLog;
use chorus_registry::Registry;
use chorus_registry::memory::MemoryRegistry;
use chorus_store::Store;
use chorus_store::sqlite::SqliteStore;
use std::sync::Arc;

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
        "postgres" | "postgresql" => bail!(
            "database {url}: this build has no PostgreSQL support (build with --features postgres)"
        ),
        other => {
            bail!("database {url}: unknown scheme `{other}` (expected sqlite:// or postgres://)")
        }
    }
}

/// The registry at `url`.
pub async fn registry(url: &str) -> anyhow::Result<Arc<dyn Registry>> {
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryRegistry::new())),
        "redis" => {
            bail!("registry {url}: this build has no Redis support (build with --features redis)")
        }
        other => bail!("registry {url}: unknown scheme `{other}` (expected memory:// or redis://)"),
    }
}
