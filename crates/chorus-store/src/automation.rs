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

/// Emits `impl AutomationStore for $store` for a `$store` implementing
/// [`crate::backend::Backend`] (see there).
macro_rules! impl_automation_store {
    ($store:ty) => {
        const _: () = {
            use $crate::automation::{consecutive_after, disabled_reason, join_hooks, parse_hooks};
            use $crate::backend::{Backend, Query, Row};
            use $crate::{AutomationStore, Result, ScriptRuns, StoreError, from_millis, millis};
            use ::chorus_core::model::{AutoReply, Script, ScriptError};
            use ::chorus_core::{ConversationId, MessageId, ScriptId, UserId};
            use ::chrono::{DateTime, Utc};
            use ::sqlx::Row as _;
            use ::std::time::Duration;

            /// The columns a script's author sets (see `bind_definition`).
            const DEFINITION_COLUMNS: &str = "name, source, hooks, enabled, fail_closed, \
                 memory_bytes, cpu_ms, version, updated_at";

            const SCRIPT_COLUMNS: &str = "id, owner_id, name, source, hooks, enabled, \
                 fail_closed, memory_bytes, cpu_ms, version, runs, failures, \
                 consecutive_failures, last_error_code, last_error_message, last_error_at, \
                 last_logs, disabled_reason, created_at, updated_at";

            impl $store {
                /// Binds a script's definition, [`DEFINITION_COLUMNS`] in order, as the
                /// first parameters of `query`.
                fn bind_definition<'q>(query: Query<'q, Self>, s: &'q Script) -> Query<'q, Self> {
                    query
                        .bind(&s.name)
                        .bind(&s.source)
                        .bind(join_hooks(&s.hooks))
                        .bind(s.enabled)
                        .bind(s.fail_closed)
                        .bind(s.memory_bytes as i64)
                        .bind(s.cpu_ms as i64)
                        .bind(s.version)
                        .bind(millis(s.updated_at))
                }

                fn script_row(row: &Row<Self>) -> Result<Script> {
                    let code: Option<String> = row.try_get("last_error_code")?;
                    let last_error = match code {
                        Some(code) => Some(ScriptError {
                            code,
                            message: row
                                .try_get::<Option<String>, _>("last_error_message")?
                                .unwrap_or_default(),
                            at: from_millis(
                                row.try_get::<Option<i64>, _>("last_error_at")?
                                    .unwrap_or_default(),
                            )?,
                        }),
                        None => None,
                    };
                    let logs: &str = row.try_get("last_logs")?;
                    Ok(Script {
                        id: ScriptId(Self::get_id(row, "id")?),
                        owner_id: UserId(Self::get_id(row, "owner_id")?),
                        name: row.try_get("name")?,
                        source: row.try_get("source")?,
                        hooks: parse_hooks(row.try_get("hooks")?)?,
                        enabled: row.try_get("enabled")?,
                        fail_closed: row.try_get("fail_closed")?,
                        memory_bytes: row.try_get::<i64, _>("memory_bytes")? as u64,
                        cpu_ms: row.try_get::<i64, _>("cpu_ms")? as u64,
                        version: row.try_get("version")?,
                        runs: row.try_get("runs")?,
                        failures: row.try_get("failures")?,
                        consecutive_failures: row.try_get("consecutive_failures")?,
                        last_error,
                        last_logs: ::serde_json::from_str(logs)
                            .map_err(|e| StoreError::Corrupt(format!("last_logs: {e}")))?,
                        disabled_reason: row.try_get("disabled_reason")?,
                        created_at: from_millis(row.try_get("created_at")?)?,
                        updated_at: from_millis(row.try_get("updated_at")?)?,
                    })
                }
            }

            #[::async_trait::async_trait]
            impl AutomationStore for $store {
                async fn create_script(&self, s: &Script) -> Result<()> {
                    let insert = format!(
                        "INSERT INTO scripts ({DEFINITION_COLUMNS}, id, owner_id, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                    );
                    Self::bind_definition(::sqlx::query(&insert), s)
                        .bind(Self::id(s.id.0))
                        .bind(Self::id(s.owner_id.0))
                        .bind(millis(s.created_at))
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn scripts_of(&self, owner: UserId) -> Result<Vec<Script>> {
                    ::sqlx::query(&format!(
                        "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE owner_id = $1 \
                         ORDER BY created_at, id"
                    ))
                    .bind(Self::id(owner.0))
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(Self::script_row)
                    .collect()
                }

                async fn script(&self, id: ScriptId) -> Result<Option<Script>> {
                    ::sqlx::query(&format!("SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = $1"))
                        .bind(Self::id(id.0))
                        .fetch_optional(self.reader())
                        .await?
                        .as_ref()
                        .map(Self::script_row)
                        .transpose()
                }

                async fn update_script(&self, s: &Script) -> Result<()> {
                    let done = Self::bind_definition(
                        ::sqlx::query(
                            "UPDATE scripts SET name = $1, source = $2, hooks = $3, \
                             enabled = $4, fail_closed = $5, memory_bytes = $6, cpu_ms = $7, \
                             version = $8, updated_at = $9, disabled_reason = $10, \
                             consecutive_failures = $11 WHERE id = $12",
                        ),
                        s,
                    )
                    .bind(&s.disabled_reason)
                    .bind(s.consecutive_failures)
                    .bind(Self::id(s.id.0))
                    .execute(self.writer())
                    .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound("script"));
                    }
                    Ok(())
                }

                async fn delete_script(&self, id: ScriptId) -> Result<bool> {
                    let done = ::sqlx::query("DELETE FROM scripts WHERE id = $1")
                        .bind(Self::id(id.0))
                        .execute(self.writer())
                        .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn enabled_scripts(&self) -> Result<Vec<Script>> {
                    ::sqlx::query(&format!(
                        "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE enabled ORDER BY created_at, id"
                    ))
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(Self::script_row)
                    .collect()
                }

                async fn record_script_runs(
                    &self,
                    runs: &[ScriptRuns],
                    disable_after: i64,
                ) -> Result<Vec<Script>> {
                    let mut tx = self.write().await?;
                    let mut disabled = Vec::new();
                    let counts = format!(
                        "SELECT consecutive_failures, enabled FROM scripts WHERE id = $1{}",
                        Self::FOR_UPDATE
                    );
                    for r in runs {
                        let row = ::sqlx::query(&counts)
                            .bind(Self::id(r.id.0))
                            .fetch_optional(&mut *tx)
                            .await?;
                        let Some(row) = row else { continue };
                        let consecutive = consecutive_after(row.try_get("consecutive_failures")?, r);
                        let enabled: bool = row.try_get("enabled")?;
                        let disable = enabled && consecutive >= disable_after;
                        let logs =
                            ::serde_json::to_string(&r.last_logs).unwrap_or_else(|_| "[]".into());
                        ::sqlx::query(
                            "UPDATE scripts SET runs = runs + $1, failures = failures + $2, \
                             consecutive_failures = $3, last_logs = $4, \
                             last_error_code = COALESCE($5, last_error_code), \
                             last_error_message = COALESCE($6, last_error_message), \
                             last_error_at = COALESCE($7, last_error_at) WHERE id = $8",
                        )
                        .bind(r.runs)
                        .bind(r.failures)
                        .bind(consecutive)
                        .bind(logs)
                        .bind(r.last_error.as_ref().map(|e| e.code.clone()))
                        .bind(r.last_error.as_ref().map(|e| e.message.clone()))
                        .bind(r.last_error.as_ref().map(|e| millis(e.at)))
                        .bind(Self::id(r.id.0))
                        .execute(&mut *tx)
                        .await?;
                        if disable {
                            ::sqlx::query(
                                "UPDATE scripts SET enabled = FALSE, version = version + 1, \
                                 disabled_reason = $1, updated_at = $2 WHERE id = $3",
                            )
                            .bind(disabled_reason(consecutive, r.last_error.as_ref()))
                            .bind(millis(Utc::now()))
                            .bind(Self::id(r.id.0))
                            .execute(&mut *tx)
                            .await?;
                            let row = ::sqlx::query(&format!(
                                "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = $1"
                            ))
                            .bind(Self::id(r.id.0))
                            .fetch_one(&mut *tx)
                            .await?;
                            disabled.push(Self::script_row(&row)?);
                        }
                    }
                    tx.commit().await?;
                    Ok(disabled)
                }

                async fn kv_get(&self, script: ScriptId, key: &str) -> Result<Option<String>> {
                    Ok(::sqlx::query_scalar(
                        "SELECT value FROM script_kv WHERE script_id = $1 AND key = $2",
                    )
                    .bind(Self::id(script.0))
                    .bind(key)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn kv_set(
                    &self,
                    script: ScriptId,
                    key: &str,
                    value: &str,
                    max_keys: i64,
                ) -> Result<bool> {
                    let mut tx = self.write().await?;
                    let updated = ::sqlx::query(
                        "UPDATE script_kv SET value = $1 WHERE script_id = $2 AND key = $3",
                    )
                    .bind(value)
                    .bind(Self::id(script.0))
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                    if updated.rows_affected() == 0 {
                        let keys: i64 =
                            ::sqlx::query_scalar("SELECT COUNT(*) FROM script_kv WHERE script_id = $1")
                                .bind(Self::id(script.0))
                                .fetch_one(&mut *tx)
                                .await?;
                        if keys >= max_keys {
                            return Ok(false);
                        }
                        ::sqlx::query(
                            "INSERT INTO script_kv (script_id, key, value) VALUES ($1, $2, $3)",
                        )
                        .bind(Self::id(script.0))
                        .bind(key)
                        .bind(value)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                }

                async fn kv_delete(&self, script: ScriptId, key: &str) -> Result<()> {
                    ::sqlx::query("DELETE FROM script_kv WHERE script_id = $1 AND key = $2")
                        .bind(Self::id(script.0))
                        .bind(key)
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn auto_reply(&self, user: UserId) -> Result<AutoReply> {
                    let row =
                        ::sqlx::query("SELECT enabled, text FROM auto_replies WHERE user_id = $1")
                            .bind(Self::id(user.0))
                            .fetch_optional(self.reader())
                            .await?;
                    Ok(match row {
                        Some(r) => AutoReply {
                            enabled: r.try_get("enabled")?,
                            text: r.try_get("text")?,
                        },
                        None => AutoReply::default(),
                    })
                }

                async fn set_auto_reply(&self, user: UserId, reply: &AutoReply) -> Result<()> {
                    ::sqlx::query(
                        "INSERT INTO auto_replies (user_id, enabled, text, updated_at) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (user_id) DO UPDATE SET enabled = excluded.enabled, \
                         text = excluded.text, updated_at = excluded.updated_at",
                    )
                    .bind(Self::id(user.0))
                    .bind(reply.enabled)
                    .bind(&reply.text)
                    .bind(millis(Utc::now()))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn enabled_auto_replies(&self) -> Result<Vec<(UserId, String)>> {
                    ::sqlx::query("SELECT user_id, text FROM auto_replies WHERE enabled")
                        .fetch_all(self.reader())
                        .await?
                        .iter()
                        .map(|r| Ok((UserId(Self::get_id(r, "user_id")?), r.try_get("text")?)))
                        .collect()
                }

                async fn claim_auto_reply(
                    &self,
                    owner: UserId,
                    conversation: ConversationId,
                    sender: UserId,
                    trigger: MessageId,
                    now: DateTime<Utc>,
                    window: Duration,
                ) -> Result<bool> {
                    let now = millis(now);
                    let since = now - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
                    let claimed = ::sqlx::query(
                        "INSERT INTO auto_reply_sent \
                         (owner_id, conversation_id, sender_id, trigger_id, sent_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (owner_id, conversation_id, sender_id) DO UPDATE \
                         SET trigger_id = excluded.trigger_id, sent_at = excluded.sent_at \
                         WHERE auto_reply_sent.sent_at <= $6 OR auto_reply_sent.trigger_id = $4 \
                         RETURNING trigger_id",
                    )
                    .bind(Self::id(owner.0))
                    .bind(Self::id(conversation.0))
                    .bind(Self::id(sender.0))
                    .bind(Self::id(trigger.0))
                    .bind(now)
                    .bind(since)
                    .fetch_optional(self.writer())
                    .await?;
                    Ok(claimed.is_some())
                }
            }
        };
    };
}
pub(crate) use impl_automation_store;
