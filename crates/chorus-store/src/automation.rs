//! Users' scripts, their key-value state and auto-replies: the [`AutomationStore`]
//! contract every store also fulfils, and the [`Automations`] cache the stages and
//! gateways read on every message.

use crate::{Result, Store};
use chorus_core::model::{AutoReply, Hook, Script, ScriptError};
use chorus_core::{ConversationId, MessageId, ScriptId, UserId};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What a batch of runs of one script did, to add to its counts.
#[derive(Clone, Debug)]
pub struct ScriptRuns {
    /// The script.
    pub id: ScriptId,
    /// Runs in the batch.
    pub runs: i64,
    /// Failed runs in the batch.
    pub failures: i64,
    /// Whether any run in the batch succeeded.
    pub any_ok: bool,
    /// Failures after the batch's last good run (all of them if none was good).
    pub trailing_failures: i64,
    /// The batch's last failure.
    pub last_error: Option<ScriptError>,
    /// What the batch's last run logged.
    pub last_logs: Vec<String>,
}

/// Durable state of automation. Every [`Store`] implements it.
///
/// # Contract
///
/// - [`AutomationStore::record_script_runs`] adds the counts in one transaction and
///   disables (with a reason, bumping `version`) every enabled script whose failures in
///   a row reach `disable_after`; it returns the scripts it disabled.
/// - [`AutomationStore::claim_auto_reply`] is the window: it returns `true` when no
///   auto-reply from `owner` to `sender` in `conversation` was sent within `window`
///   before `now` (and records this one), and also when the recorded one was for the
///   same `trigger` (a replayed batch answers again, with the same derived id).
#[async_trait::async_trait]
pub trait AutomationStore: Send + Sync {
    /// Stores a new script.
    async fn create_script(&self, script: &Script) -> Result<()>;
    /// The scripts of `owner`, oldest first.
    async fn scripts_of(&self, owner: UserId) -> Result<Vec<Script>>;
    /// A script by id.
    async fn script(&self, id: ScriptId) -> Result<Option<Script>>;
    /// Writes a script's definition (name, source, hooks, flags, limits, version,
    /// `updated_at`, `disabled_reason`, `consecutive_failures`); `NotFound` if missing.
    async fn update_script(&self, script: &Script) -> Result<()>;
    /// Deletes a script and its state; `false` if there was none.
    async fn delete_script(&self, id: ScriptId) -> Result<bool>;
    /// Every enabled script (to fill the cache).
    async fn enabled_scripts(&self) -> Result<Vec<Script>>;
    /// Adds run counts; see the trait docs.
    async fn record_script_runs(
        &self,
        runs: &[ScriptRuns],
        disable_after: i64,
    ) -> Result<Vec<Script>>;

    /// A value of a script's state (JSON text).
    async fn kv_get(&self, script: ScriptId, key: &str) -> Result<Option<String>>;
    /// Sets a value; `false` (nothing written) when the key is new and the script
    /// already has `max_keys` keys.
    async fn kv_set(&self, script: ScriptId, key: &str, value: &str, max_keys: i64)
    -> Result<bool>;
    /// Deletes a value.
    async fn kv_delete(&self, script: ScriptId, key: &str) -> Result<()>;

    /// The auto-reply of `user` (disabled and empty if never set).
    async fn auto_reply(&self, user: UserId) -> Result<AutoReply>;
    /// Sets the auto-reply of `user`.
    async fn set_auto_reply(&self, user: UserId, reply: &AutoReply) -> Result<()>;
    /// Every enabled auto-reply (to fill the cache).
    async fn enabled_auto_replies(&self) -> Result<Vec<(UserId, String)>>;
    /// The auto-reply window; see the trait docs.
    async fn claim_auto_reply(
        &self,
        owner: UserId,
        conversation: ConversationId,
        sender: UserId,
        trigger: MessageId,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Result<bool>;
}

/// The enabled automation of one user.
#[derive(Debug, Default)]
pub struct UserAutomation {
    /// Enabled scripts, oldest first.
    pub scripts: Vec<Arc<Script>>,
    /// The auto-reply text, when enabled.
    pub auto_reply: Option<String>,
}

impl UserAutomation {
    /// The enabled scripts running on `hook`, oldest first.
    pub fn on(&self, hook: Hook) -> impl Iterator<Item = &Arc<Script>> {
        self.scripts.iter().filter(move |s| s.runs_on(hook))
    }

    fn is_empty(&self) -> bool {
        self.scripts.is_empty() && self.auto_reply.is_none()
    }
}

/// Every user's enabled scripts and auto-reply, in memory.
///
/// Filled once at start ([`Automations::load`]); a change is applied with
/// [`Automations::refresh`], locally by the gateway that made it and, on other nodes,
/// when its notice arrives on the control topic. Users without automation take no
/// space, and the hot path asks only "has this user any?".
#[derive(Clone)]
pub struct Automations {
    store: Arc<dyn Store>,
    users: Arc<RwLock<HashMap<UserId, Arc<UserAutomation>>>>,
    /// Serialises refreshes so that an older read never replaces a newer one.
    refreshing: Arc<tokio::sync::Mutex<()>>,
}

impl Automations {
    /// An empty cache in front of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            users: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    /// Reads every enabled script and auto-reply.
    pub async fn load(&self) -> Result<()> {
        let _guard = self.refreshing.lock().await;
        let mut users: HashMap<UserId, UserAutomation> = HashMap::new();
        for script in self.store.enabled_scripts().await? {
            users
                .entry(script.owner_id)
                .or_default()
                .scripts
                .push(Arc::new(script));
        }
        for (user, text) in self.store.enabled_auto_replies().await? {
            users.entry(user).or_default().auto_reply = Some(text);
        }
        let users = users.into_iter().map(|(u, a)| (u, Arc::new(a))).collect();
        *self.write() = users;
        Ok(())
    }

    /// Reads the automation of `user` again.
    pub async fn refresh(&self, user: UserId) -> Result<()> {
        let _guard = self.refreshing.lock().await;
        let scripts = self.store.scripts_of(user).await?;
        let reply = self.store.auto_reply(user).await?;
        let automation = UserAutomation {
            scripts: scripts
                .into_iter()
                .filter(|s| s.enabled)
                .map(Arc::new)
                .collect(),
            auto_reply: reply.enabled.then_some(reply.text),
        };
        let mut users = self.write();
        if automation.is_empty() {
            users.remove(&user);
        } else {
            users.insert(user, Arc::new(automation));
        }
        Ok(())
    }

    /// The automation of `user`, if any.
    pub fn get(&self, user: UserId) -> Option<Arc<UserAutomation>> {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&user)
            .cloned()
    }

    /// Whether `user` has an enabled script on `hook` (for `Incoming`: or an
    /// enabled auto-reply).
    pub fn has(&self, user: UserId, hook: Hook) -> bool {
        self.get(user).is_some_and(|a| {
            a.on(hook).next().is_some() || (hook == Hook::Incoming && a.auto_reply.is_some())
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, Arc<UserAutomation>>> {
        self.users.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Splits a stored comma list of hooks.
pub(crate) fn parse_hooks(s: &str) -> Result<Vec<Hook>> {
    s.split(',')
        .filter(|h| !h.is_empty())
        .map(|h| Hook::parse(h).ok_or_else(|| crate::StoreError::Corrupt(format!("hook {h:?}"))))
        .collect()
}

/// Joins hooks for storage.
pub(crate) fn join_hooks(hooks: &[Hook]) -> String {
    hooks
        .iter()
        .map(|h| h.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The consecutive-failure count after a batch.
pub(crate) fn consecutive_after(before: i64, runs: &ScriptRuns) -> i64 {
    if runs.any_ok {
        runs.trailing_failures
    } else {
        before + runs.trailing_failures
    }
}

/// Why a script was disabled.
pub(crate) fn disabled_reason(failures: i64, last: Option<&ScriptError>) -> String {
    match last {
        Some(e) => format!(
            "disabled after {failures} failed runs in a row; last: {}: {}",
            e.code, e.message
        ),
        None => format!("disabled after {failures} failed runs in a row"),
    }
}
