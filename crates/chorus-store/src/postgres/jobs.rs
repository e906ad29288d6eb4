//! [`JobStore`] on PostgreSQL.

use super::PostgresStore;
use crate::jobs::{JOB_COLUMNS, JobRow, output_text, source_text};
use crate::{FinishedJob, JobStore, Result, StoredJob, millis};
use async_trait::async_trait;
use chorus_core::model::{Job, JobResult, JobStatus};
use chorus_core::{JobId, UserId};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

fn job_row(row: &PgRow) -> Result<JobRow> {
    Ok(JobRow {
        id: JobId(row.try_get("id")?),
        owner_id: UserId(row.try_get("owner_id")?),
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

fn stored(row: Option<PgRow>) -> Result<Option<StoredJob>> {
    row.as_ref().map(|r| job_row(r)?.stored()).transpose()
}

#[async_trait]
impl JobStore for PostgresStore {
    async fn create_job(&self, owner: UserId, job: &Job) -> Result<()> {
        sqlx::query(
            "INSERT INTO jobs (id, owner_id, status, source, cpu_ms, memory_bytes, submitted_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(job.id.0)
        .bind(owner.0)
        .bind(job.status.as_str())
        .bind(source_text(&job.source))
        .bind(job.cpu_ms as i64)
        .bind(job.memory_bytes as i64)
        .bind(millis(job.submitted_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn job(&self, id: JobId) -> Result<Option<StoredJob>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        stored(row)
    }

    async fn jobs_of(&self, owner: UserId, limit: i64) -> Result<Vec<Job>> {
        sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE owner_id = $1 \
             ORDER BY submitted_at DESC, id DESC LIMIT $2"
        ))
        .bind(owner.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok(job_row(r)?.stored()?.job))
        .collect()
    }

    async fn jobs_count(&self, owner: UserId) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE owner_id = $1")
                .bind(owner.0)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn start_job(&self, id: JobId, at: DateTime<Utc>) -> Result<Option<StoredJob>> {
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = $1, started_at = $2 \
             WHERE id = $3 AND status IN ('queued', 'running') RETURNING {JOB_COLUMNS}"
        ))
        .bind(JobStatus::Running.as_str())
        .bind(millis(at))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        stored(row)
    }

    async fn finish_job(&self, id: JobId, f: &FinishedJob) -> Result<Option<StoredJob>> {
        let row = sqlx::query(&format!(
            "UPDATE jobs SET status = $1, output = $2, error_code = $3, error_message = $4, \
             elapsed_ms = $5, started_at = $6, finished_at = $7 \
             WHERE id = $8 AND status IN ('queued', 'running') RETURNING {JOB_COLUMNS}"
        ))
        .bind(f.status.as_str())
        .bind(output_text(&f.output))
        .bind(f.error.as_ref().map(|e| e.code.as_str()))
        .bind(f.error.as_ref().map(|e| e.message.as_str()))
        .bind(f.elapsed_ms as i64)
        .bind(millis(f.started_at))
        .bind(millis(f.finished_at))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        stored(row)
    }

    async fn job_result(&self, id: JobId) -> Result<Option<JobResult>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => job_row(&row)?.result(),
            None => Ok(None),
        }
    }

    async fn delete_job(&self, id: JobId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM jobs WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn observer_config(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT config FROM observer_config WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_observer_config(&self, config: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO observer_config (id, config) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET config = excluded.config",
        )
        .bind(config)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
