//! [`AutomationStore`] on PostgreSQL.

use super::PostgresStore;
use crate::automation::{consecutive_after, disabled_reason, join_hooks, parse_hooks};
use crate::{AutomationStore, Result, ScriptRuns, StoreError, from_millis, millis};
use async_trait::async_trait;
use chorus_core::model::{AutoReply, Script, ScriptError};
use chorus_core::{ConversationId, MessageId, ScriptId, UserId};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use std::time::Duration;

const SCRIPT_COLUMNS: &str = "id, owner_id, name, source, hooks, enabled, fail_closed, \
     memory_bytes, cpu_ms, version, runs, failures, consecutive_failures, last_error_code, \
     last_error_message, last_error_at, last_logs, disabled_reason, created_at, updated_at";

fn script_row(row: &PgRow) -> Result<Script> {
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
        id: ScriptId(row.try_get("id")?),
        owner_id: UserId(row.try_get("owner_id")?),
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
impl AutomationStore for PostgresStore {
    async fn create_script(&self, s: &Script) -> Result<()> {
        sqlx::query(
            "INSERT INTO scripts (id, owner_id, name, source, hooks, enabled, fail_closed, \
             memory_bytes, cpu_ms, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(s.id.0)
        .bind(s.owner_id.0)
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn scripts_of(&self, owner: UserId) -> Result<Vec<Script>> {
        sqlx::query(&format!(
            "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE owner_id = $1 ORDER BY created_at, id"
        ))
        .bind(owner.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(script_row)
        .collect()
    }

    async fn script(&self, id: ScriptId) -> Result<Option<Script>> {
        sqlx::query(&format!(
            "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(script_row)
        .transpose()
    }

    async fn update_script(&self, s: &Script) -> Result<()> {
        let done = sqlx::query(
            "UPDATE scripts SET name = $1, source = $2, hooks = $3, enabled = $4, fail_closed = $5, \
             memory_bytes = $6, cpu_ms = $7, version = $8, updated_at = $9, disabled_reason = $10, \
             consecutive_failures = $11 WHERE id = $12",
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
        .bind(s.id.0)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("script"));
        }
        Ok(())
    }

    async fn delete_script(&self, id: ScriptId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM scripts WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn enabled_scripts(&self) -> Result<Vec<Script>> {
        sqlx::query(&format!(
            "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE enabled ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let mut disabled = Vec::new();
        for r in runs {
            let row = sqlx::query(
                "SELECT consecutive_failures, enabled FROM scripts WHERE id = $1 FOR UPDATE",
            )
            .bind(r.id.0)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            let consecutive = consecutive_after(row.try_get(0)?, r);
            let enabled: bool = row.try_get(1)?;
            let disable = enabled && consecutive >= disable_after;
            let logs = serde_json::to_string(&r.last_logs).unwrap_or_else(|_| "[]".into());
            sqlx::query(
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
            .bind(r.id.0)
            .execute(&mut *tx)
            .await?;
            if disable {
                sqlx::query(
                    "UPDATE scripts SET enabled = FALSE, version = version + 1, \
                     disabled_reason = $1, updated_at = $2 WHERE id = $3",
                )
                .bind(disabled_reason(consecutive, r.last_error.as_ref()))
                .bind(millis(Utc::now()))
                .bind(r.id.0)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query(&format!(
                    "SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = $1"
                ))
                .bind(r.id.0)
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
            sqlx::query_scalar("SELECT value FROM script_kv WHERE script_id = $1 AND key = $2")
                .bind(script.0)
                .bind(key)
                .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let updated =
            sqlx::query("UPDATE script_kv SET value = $1 WHERE script_id = $2 AND key = $3")
                .bind(value)
                .bind(script.0)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        if updated.rows_affected() == 0 {
            let keys: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM script_kv WHERE script_id = $1")
                    .bind(script.0)
                    .fetch_one(&mut *tx)
                    .await?;
            if keys >= max_keys {
                return Ok(false);
            }
            sqlx::query("INSERT INTO script_kv (script_id, key, value) VALUES ($1, $2, $3)")
                .bind(script.0)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn kv_delete(&self, script: ScriptId, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM script_kv WHERE script_id = $1 AND key = $2")
            .bind(script.0)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn auto_reply(&self, user: UserId) -> Result<AutoReply> {
        let row = sqlx::query("SELECT enabled, text FROM auto_replies WHERE user_id = $1")
            .bind(user.0)
            .fetch_optional(&self.pool)
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
            "INSERT INTO auto_replies (user_id, enabled, text, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET enabled = excluded.enabled, \
             text = excluded.text, updated_at = excluded.updated_at",
        )
        .bind(user.0)
        .bind(reply.enabled)
        .bind(&reply.text)
        .bind(millis(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn enabled_auto_replies(&self) -> Result<Vec<(UserId, String)>> {
        sqlx::query("SELECT user_id, text FROM auto_replies WHERE enabled")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((UserId(r.try_get(0)?), r.try_get(1)?)))
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
        let claimed: Option<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO auto_reply_sent (owner_id, conversation_id, sender_id, trigger_id, sent_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (owner_id, conversation_id, sender_id) DO UPDATE \
             SET trigger_id = excluded.trigger_id, sent_at = excluded.sent_at \
             WHERE auto_reply_sent.sent_at <= $6 OR auto_reply_sent.trigger_id = $4 \
             RETURNING trigger_id",
        )
        .bind(owner.0)
        .bind(conversation.0)
        .bind(sender.0)
        .bind(trigger.0)
        .bind(now)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed.is_some())
    }
}
