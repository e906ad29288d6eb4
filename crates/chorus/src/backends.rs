//! Backends by URL scheme: `local://`, `memory://` and `kafka://` logs, `sqlite://` and
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
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(s, _)| s)
}

/// The event log at `url`; a `local://` one without a directory keeps its journal in
/// `log` under `data_dir`, synced to the disk with `sync_to_disk`.
pub async fn event_log(
    url: &str,
    data_dir: &Path,
    sync_to_disk: bool,
) -> anyhow::Result<Arc<dyn EventLog>> {
    match scheme(url) {
        "memory" => Ok(Arc::new(MemoryLog::new())),
        "local" => {
            let dir = match url.trim_start_matches("local://") {
                "" => data_dir.join("log"),
                dir => dir.into(),
            };
            // Reading the journal back is file I/O: off the async workers.
            let log = tokio::task::spawn_blocking(move || MemoryLog::open(&dir, sync_to_disk))
                .await
                .context("opening the event log")?
                .with_context(|| format!("opening event log {url}"))?;
            Ok(Arc::new(log))
        }
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
            bail!(
                "event log {url}: unknown scheme `{other}` (expected local://, memory:// or kafka://)"
            )
        }
    }
}

/// The store at `url`, migrated to the current schema; a SQLite one syncs every commit
/// to the disk with `sync_to_disk`.
pub async fn store(url: &str, sync_to_disk: bool) -> anyhow::Result<Arc<dyn Store>> {
    match scheme(url) {
        "sqlite" => {
            let store = SqliteStore::open_url(url, sync_to_disk)
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
