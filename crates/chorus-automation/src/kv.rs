//! `ctx.kv`: a script's small persistent state, kept in the store.

use chorus_config::AutomationConfig;
use chorus_core::ScriptId;
use chorus_sandbox::Kv;
use chorus_store::Store;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Handle;

/// Longest key, bytes.
pub(crate) const MAX_KEY_BYTES: usize = 128;

/// The state of one script, read and written through the store from the sandbox's
/// threads (which are not the async workers, so they may wait for the database).
pub struct StoreKv {
    store: Arc<dyn Store>,
    runtime: Handle,
    script: ScriptId,
    max_keys: i64,
    max_value_bytes: usize,
    /// A dry run's writes, which never reach the store.
    overlay: Option<HashMap<String, Option<Value>>>,
}

impl StoreKv {
    /// State of `script`, bounded by `config`; a `dry_run` keeps its writes to itself.
    /// Must be created inside the async runtime.
    pub fn new(
        store: Arc<dyn Store>,
        script: ScriptId,
        config: &AutomationConfig,
        dry_run: bool,
    ) -> Self {
        Self {
            store,
            runtime: Handle::current(),
            script,
            max_keys: i64::try_from(config.kv_max_keys).unwrap_or(i64::MAX),
            max_value_bytes: config.kv_max_value_bytes,
            overlay: dry_run.then(HashMap::new),
        }
    }

    /// Waits for `operation` on the store, until `deadline` at most: past it the
    /// sandbox ends the run anyway, and a store call must not hold the thread longer.
    /// A write cut short is dropped with its transaction, so it is rolled back (or was
    /// committed whole).
    fn wait<T>(
        &self,
        deadline: Instant,
        operation: impl Future<Output = Result<T, chorus_store::StoreError>>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::from_std(deadline);
        // The timer is made inside the runtime: made on this thread (a sandbox thread,
        // outside any runtime), it would panic.
        match self
            .runtime
            .block_on(async { tokio::time::timeout_at(deadline, operation).await })
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("kv unavailable: {e}")),
            Err(_) => Err("kv unavailable: out of time".to_owned()),
        }
    }

    fn check_key(key: &str) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES || key.contains('\0') {
            return Err(format!(
                "kv keys are 1 to {MAX_KEY_BYTES} bytes without NUL"
            ));
        }
        Ok(())
    }
}

impl Kv for StoreKv {
    fn get(&mut self, key: &str, deadline: Instant) -> Result<Option<Value>, String> {
        Self::check_key(key)?;
        if let Some(v) = self.overlay.as_ref().and_then(|o| o.get(key)) {
            return Ok(v.clone());
        }
        let stored = self.wait(deadline, self.store.kv_get(self.script, key))?;
        stored
            .map(|text| {
                serde_json::from_str(&text).map_err(|e| format!("kv value unreadable: {e}"))
            })
            .transpose()
    }

    fn set(&mut self, key: &str, value: Value, deadline: Instant) -> Result<(), String> {
        Self::check_key(key)?;
        let text = value.to_string();
        if text.len() > self.max_value_bytes || text.contains('\0') {
            return Err(format!(
                "kv values are at most {} bytes as JSON, without NUL",
                self.max_value_bytes
            ));
        }
        if let Some(overlay) = &mut self.overlay {
            overlay.insert(key.to_owned(), Some(value));
            return Ok(());
        }
        let stored = self.wait(
            deadline,
            self.store.kv_set(self.script, key, &text, self.max_keys),
        )?;
        if stored {
            Ok(())
        } else {
            Err(format!("kv holds at most {} keys", self.max_keys))
        }
    }

    fn delete(&mut self, key: &str, deadline: Instant) -> Result<(), String> {
        Self::check_key(key)?;
        if let Some(overlay) = &mut self.overlay {
            overlay.insert(key.to_owned(), None);
            return Ok(());
        }
        self.wait(deadline, self.store.kv_delete(self.script, key))
    }
}
