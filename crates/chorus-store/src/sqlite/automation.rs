//! [`AutomationStore`] on SQLite.

use super::SqliteStore;
use crate::automation::{consecutive_after, disabled_reason, join_hooks, parse_hooks};
use crate::{AutomationStore, Result, ScriptRuns, StoreError, from_millis, millis, parse_id};
use async_trait::async_trait;
use chorus_core::model::{AutoReply, Script, ScriptError};
use chorus_core::{ConversationId, MessageId, ScriptId, UserId};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use std::time::Duration;

const SCRIPT_COLUMNS: &str = "id, owner_id, name, source, hooks, enabled, fail_closed, \
     memory_bytes, cpu_ms, version, runs, failures, consecutive_failures, last_error_code, \
     last_error_message, last_error_at, last_logs, disabled_reason, created_at, updated_at";

fn script_row(row: &SqliteRow) -> Result<Script> {
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
        id: parse_id(row.try_get::<&str, _>("id")?)?,
        owner_id: parse_id(row.try_get::<&str, _>("owner_id")?)?,
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
        last_logs: serde_json::from_str(logs)
            .map_err(|e| StoreError::Corrupt(format!("last_logs: {e}")))?,
        disabled_reason: row.try_get("disabled_reason")?,
        created_at: from_millis(row.try_get("created_at")?)?,
        updated_at: from_millis(row.try_get("updated_at")?)?,
    })
}

#[async_trait]
impl AutomationStore for SqliteStore {
    async fn create_script(&self, s: &Script) -> Result<()> {
        sqlx::query(
            "INSERT INTO scripts (id, owner_id, name, source, hooks, enabled, fail_closed, \
             memory_bytes, cpu_ms, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id.to_string())
        .bind(s.owner_id.to_string())
        .bind(&s.name)
        .bind(&s.source)
        .bind(join_hooks(&s.hooks))
        .bind(s.enabled)
        .bind(s.fail_closed)
        .bind(s.memory_bytes as i64)
        .bind(s.cpu_ms as i64)
        .bind(s.version)
        .bind(millis(s.created_at))
        .bind(millis(s.updated_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn scripts_of(&self, owner: UserId) -> Result<Vec<Script>> {
        sqlx::query(&format!(
            "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE owner_id = ? ORDER BY created_at, id"
        ))
        .bind(owner.to_string())
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(script_row)
        .collect()
    }

    async fn script(&self, id: ScriptId) -> Result<Option<Script>> {
        sqlx::query(&format!(
            "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = ?"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?
        .as_ref()
        .map(script_row)
        .transpose()
    }

    async fn update_script(&self, s: &Script) -> Result<()> {
        let done = sqlx::query(
            "UPDATE scripts SET name = ?, source = ?, hooks = ?, enabled = ?, fail_closed = ?, \
             memory_bytes = ?, cpu_ms = ?, version = ?, updated_at = ?, disabled_reason = ?, \
             consecutive_failures = ? WHERE id = ?",
        )
        .bind(&s.name)
        .bind(&s.source)
        .bind(join_hooks(&s.hooks))
        .bind(s.enabled)
        .bind(s.fail_closed)
        .bind(s.memory_bytes as i64)
        .bind(s.cpu_ms as i64)
        .bind(s.version)
        .bind(millis(s.updated_at))
        .bind(&s.disabled_reason)
        .bind(s.consecutive_failures)
        .bind(s.id.to_string())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("script"));
        }
        Ok(())
    }

    async fn delete_script(&self, id: ScriptId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM scripts WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn enabled_scripts(&self) -> Result<Vec<Script>> {
        sqlx::query(&format!(
            "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE enabled ORDER BY created_at, id"
        ))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(script_row)
        .collect()
    }

    async fn record_script_runs(
        &self,
        runs: &[ScriptRuns],
        disable_after: i64,
    ) -> Result<Vec<Script>> {
        let mut tx = self.write().await?;
        let mut disabled = Vec::new();
        for r in runs {
            let row = sqlx::query("SELECT consecutive_failures, enabled FROM scripts WHERE id = ?")
                .bind(r.id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else { continue };
            let consecutive = consecutive_after(row.try_get(0)?, r);
            let enabled: bool = row.try_get(1)?;
            let disable = enabled && consecutive >= disable_after;
            let logs = serde_json::to_string(&r.last_logs).unwrap_or_else(|_| "[]".into());
            sqlx::query(
                "UPDATE scripts SET runs = runs + ?, failures = failures + ?, \
                 consecutive_failures = ?, last_logs = ?, \
                 last_error_code = COALESCE(?, last_error_code), \
                 last_error_message = COALESCE(?, last_error_message), \
                 last_error_at = COALESCE(?, last_error_at) WHERE id = ?",
            )
            .bind(r.runs)
            .bind(r.failures)
            .bind(consecutive)
            .bind(logs)
            .bind(r.last_error.as_ref().map(|e| e.code.clone()))
            .bind(r.last_error.as_ref().map(|e| e.message.clone()))
            .bind(r.last_error.as_ref().map(|e| millis(e.at)))
            .bind(r.id.to_string())
            .execute(&mut *tx)
            .await?;
            if disable {
                sqlx::query(
                    "UPDATE scripts SET enabled = 0, version = version + 1, \
                     disabled_reason = ?, updated_at = ? WHERE id = ?",
                )
                .bind(disabled_reason(consecutive, r.last_error.as_ref()))
                .bind(millis(Utc::now()))
                .bind(r.id.to_string())
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query(&format!(
                    "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = ?"
                ))
                .bind(r.id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                disabled.push(script_row(&row)?);
            }
        }
        tx.commit().await?;
        Ok(disabled)
    }

    async fn kv_get(&self, script: ScriptId, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM script_kv WHERE script_id = ? AND key = ?")
                .bind(script.to_string())
                .bind(key)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn kv_set(
        &self,
        script: ScriptId,
        key: &str,
        value: &str,
        max_keys: i64,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let updated = sqlx::query("UPDATE script_kv SET value = ? WHERE script_id = ? AND key = ?")
            .bind(value)
            .bind(script.to_string())
            .bind(key)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            let keys: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM script_kv WHERE script_id = ?")
                    .bind(script.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
            if keys >= max_keys {
                return Ok(false);
            }
            sqlx::query("INSERT INTO script_kv (script_id, key, value) VALUES (?, ?, ?)")
                .bind(script.to_string())
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn kv_delete(&self, script: ScriptId, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM script_kv WHERE script_id = ? AND key = ?")
            .bind(script.to_string())
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn auto_reply(&self, user: UserId) -> Result<AutoReply> {
        let row = sqlx::query("SELECT enabled, text FROM auto_replies WHERE user_id = ?")
            .bind(user.to_string())
            .fetch_optional(&self.reader)
            .await?;
        Ok(match row {
            Some(r) => AutoReply {
                enabled: r.try_get(0)?,
                text: r.try_get(1)?,
            },
            None => AutoReply::default(),
        })
    }

    async fn set_auto_reply(&self, user: UserId, reply: &AutoReply) -> Result<()> {
        sqlx::query(
            "INSERT INTO auto_replies (user_id, enabled, text, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id) DO UPDATE SET enabled = excluded.enabled, \
             text = excluded.text, updated_at = excluded.updated_at",
        )
        .bind(user.to_string())
        .bind(reply.enabled)
        .bind(&reply.text)
        .bind(millis(Utc::now()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn enabled_auto_replies(&self) -> Result<Vec<(UserId, String)>> {
        sqlx::query("SELECT user_id, text FROM auto_replies WHERE enabled")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| Ok((parse_id(r.try_get::<&str, _>(0)?)?, r.try_get(1)?)))
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
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO auto_reply_sent (owner_id, conversation_id, sender_id, trigger_id, sent_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (owner_id, conversation_id, sender_id) DO UPDATE \
             SET trigger_id = excluded.trigger_id, sent_at = excluded.sent_at \
             WHERE auto_reply_sent.sent_at <= ?6 OR auto_reply_sent.trigger_id = ?4 \
             RETURNING trigger_id",
        )
        .bind(owner.to_string())
        .bind(conversation.to_string())
        .bind(sender.to_string())
        .bind(trigger.to_string())
        .bind(now)
        .bind(since)
        .fetch_optional(&self.writer)
        .await?;
        Ok(claimed.is_some())
    }
}
