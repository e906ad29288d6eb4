//! [`JobStore`] on SQLite.

use super::SqliteStore;
use crate::jobs::{JOB_COLUMNS, JobRow, output_text, source_text};
use crate::{FinishedJob, JobStore, Result, StoredJob, millis, parse_id};
use async_trait::async_trait;
use chorus_core::model::{Job, JobResult, JobStatus};
use chorus_core::{JobId, UserId};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

fn job_row(row: &SqliteRow) -> Result<JobRow> {
    Ok(JobRow {
        id: parse_id(row.try_get::<&str, _>("id")?)?,
        owner_id: parse_id(row.try_get::<&str, _>("owner_id")?)?,
        status: row.try_get("status")?,
        source: row.try_get("source")?,
        cpu_ms: row.try_get("cpu_ms")?,
        memory_bytes: row.try_get("memory_bytes")?,
        submitted_at: row.try_get("submitted_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        output: row.try_get("output")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        elapsed_ms: row.try_get("elapsed_ms")?,
    })
}

fn stored(row: Option<SqliteRow>) -> Result<Option<StoredJob>> {
    row.as_ref().map(|r| job_row(r)?.stored()).transpose()
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create_job(&self, owner: UserId, job: &Job) -> Result<()> {
        sqlx::query(
            "INSERT INTO jobs (id, owner_id, status, source, cpu_ms, memory_bytes, submitted_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id.to_string())
        .bind(owner.to_string())
        .bind(job.status.as_str())
        .bind(source_text(&job.source))
        .bind(job.cpu_ms as i64)
        .bind(job.memory_bytes as i64)
        .bind(millis(job.submitted_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn job(&self, id: JobId) -> Result<Option<StoredJob>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        stored(row)
    }

    async fn jobs_of(&self, owner: UserId, limit: i64) -> Result<Vec<Job>> {
        sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE owner_id = ? \
             ORDER BY submitted_at DESC, id DESC LIMIT ?"
        ))
        .bind(owner.to_string())
        .bind(limit)
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(|r| Ok(job_row(r)?.stored()?.job))
        .collect()
    }

    async fn jobs_count(&self, owner: UserId) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE owner_id = ?")
                .bind(owner.to_string())
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn start_job(&self, id: JobId, at: DateTime<Utc>) -> Result<Option<StoredJob>> {
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = ?, started_at = ? \
             WHERE id = ? AND status IN ('queued', 'running') RETURNING {JOB_COLUMNS}"
        ))
        .bind(JobStatus::Running.as_str())
        .bind(millis(at))
        .bind(id.to_string())
        .fetch_optional(&self.writer)
        .await?;
        stored(row)
    }

    async fn finish_job(&self, id: JobId, f: &FinishedJob) -> Result<Option<StoredJob>> {
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = ?, output = ?, error_code = ?, error_message = ?, \
             elapsed_ms = ?, started_at = ?, finished_at = ? \
             WHERE id = ? AND status IN ('queued', 'running') RETURNING {JOB_COLUMNS}"
        ))
        .bind(f.status.as_str())
        .bind(output_text(&f.output))
        .bind(f.error.as_ref().map(|e| e.code.as_str()))
        .bind(f.error.as_ref().map(|e| e.message.as_str()))
        .bind(f.elapsed_ms as i64)
        .bind(millis(f.started_at))
        .bind(millis(f.finished_at))
        .bind(id.to_string())
        .fetch_optional(&self.writer)
        .await?;
        stored(row)
    }

    async fn job_result(&self, id: JobId) -> Result<Option<JobResult>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        match row {
            Some(row) => job_row(&row)?.result(),
            None => Ok(None),
        }
    }

    async fn delete_job(&self, id: JobId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn observer_config(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT config FROM observer_config WHERE id = 1")
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn set_observer_config(&self, config: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO observer_config (id, config) VALUES (1, ?) \
             ON CONFLICT (id) DO UPDATE SET config = excluded.config",
        )
        .bind(config)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
