//! Jobs and their results: the [`JobStore`] contract every store also fulfils.

use crate::{Result, StoreError, from_millis};
use chorus_core::model::{Job, JobError, JobResult, JobSource, JobStatus};
use chorus_core::{JobId, UserId};
use chrono::{DateTime, Utc};

/// A job with its owner.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredJob {
    /// Who submitted it.
    pub owner_id: UserId,
    /// The job.
    pub job: Job,
}

/// How a job ended, to record with [`JobStore::finish_job`].
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedJob {
    /// `succeeded`, `failed` or `timed_out`.
    pub status: JobStatus,
    /// What `main` returned.
    pub output: serde_json::Value,
    /// Why it did not succeed.
    pub error: Option<JobError>,
    /// Time the run took, milliseconds.
    pub elapsed_ms: u64,
    /// When the worker that finished it took it.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
}

/// Durable state of jobs. Every [`crate::Store`] implements it.
///
/// # Contract
///
/// - A job has at most one result, and the first one recorded wins:
///   [`JobStore::finish_job`] changes only a job that is queued or running, atomically,
///   so a redelivered request that runs twice leaves the first outcome visible.
/// - [`JobStore::start_job`] marks a queued or running job running (a job whose worker
///   died is started again) and leaves finished or deleted jobs alone.
/// - Credentials are never given to the store, in clear or not.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new job of `owner`.
    async fn create_job(&self, owner: UserId, job: &Job) -> Result<()>;
    /// A job by id, with its owner.
    async fn job(&self, id: JobId) -> Result<Option<StoredJob>>;
    /// The jobs of `owner`, newest first, at most `limit`.
    async fn jobs_of(&self, owner: UserId, limit: i64) -> Result<Vec<Job>>;
    /// How many jobs `owner` has stored, finished or not.
    async fn jobs_count(&self, owner: UserId) -> Result<i64>;
    /// Marks a job running since `at`; the job now, or `None` if it is finished or gone.
    async fn start_job(&self, id: JobId, at: DateTime<Utc>) -> Result<Option<StoredJob>>;
    /// Records how a job ended; the job now, or `None` when it already had a result
    /// (or is gone) and nothing was written.
    async fn finish_job(&self, id: JobId, finished: &FinishedJob) -> Result<Option<StoredJob>>;
    /// The result of a finished job (`None`: no such job, or not finished).
    async fn job_result(&self, id: JobId) -> Result<Option<JobResult>>;
    /// Erases a job and its result; `false` if there was none.
    async fn delete_job(&self, id: JobId) -> Result<bool>;
    /// The observer's configuration as an administrator last set it (JSON text).
    async fn observer_config(&self) -> Result<Option<String>>;
    /// Replaces the observer's configuration (JSON text).
    async fn set_observer_config(&self, config: &str) -> Result<()>;
}

/// The columns of a job row, in the order both backends select them.
pub(crate) const JOB_COLUMNS: &str = "id, owner_id, status, source, cpu_ms, memory_bytes, \
     submitted_at, started_at, finished_at, output, error_code, error_message, elapsed_ms";

/// A row's values.
pub(crate) struct JobRow {
    pub id: JobId,
    pub owner_id: UserId,
    pub status: String,
    pub source: String,
    pub cpu_ms: i64,
    pub memory_bytes: i64,
    pub submitted_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub output: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub elapsed_ms: Option<i64>,
}

impl JobRow {
    fn status(&self) -> Result<JobStatus> {
        JobStatus::parse(&self.status)
            .ok_or_else(|| StoreError::Corrupt(format!("job status {:?}", self.status)))
    }

    /// The job with its owner.
    pub(crate) fn stored(&self) -> Result<StoredJob> {
        let source: JobSource = serde_json::from_str(&self.source)
            .map_err(|e| StoreError::Corrupt(format!("job source: {e}")))?;
        Ok(StoredJob {
            owner_id: self.owner_id,
            job: Job {
                id: self.id,
                status: self.status()?,
                source,
                cpu_ms: self.cpu_ms.max(0) as u64,
                memory_bytes: self.memory_bytes.max(0) as u64,
                submitted_at: from_millis(self.submitted_at)?,
                started_at: self.started_at.map(from_millis).transpose()?,
                finished_at: self.finished_at.map(from_millis).transpose()?,
            },
        })
    }

    /// The result, if the job is finished.
    pub(crate) fn result(&self) -> Result<Option<JobResult>> {
        let status = self.status()?;
        if !status.is_finished() {
            return Ok(None);
        }
        let output = match &self.output {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| StoreError::Corrupt(format!("job output: {e}")))?,
            None => serde_json::Value::Null,
        };
        let error = self.error_code.clone().map(|code| JobError {
            code,
            message: self.error_message.clone().unwrap_or_default(),
        });
        let queued_ms = self
            .started_at
            .map_or(0, |s| (s - self.submitted_at).max(0) as u64);
        Ok(Some(JobResult {
            status,
            output,
            error,
            elapsed_ms: self.elapsed_ms.unwrap_or(0).max(0) as u64,
            queued_ms,
        }))
    }
}

/// A job's source as stored (JSON text).
pub(crate) fn source_text(source: &JobSource) -> String {
    serde_json::to_string(source).expect("sources always serialize")
}

/// A result's output as stored (JSON text, `NULL` for `null`).
pub(crate) fn output_text(output: &serde_json::Value) -> Option<String> {
    (!output.is_null()).then(|| output.to_string())
}

/// Emits `impl JobStore for $store` for a `$store` implementing
/// [`crate::backend::Backend`] (see there).
macro_rules! impl_job_store {
    ($store:ty) => {
        const _: () = {
            use $crate::backend::{Backend, Row};
            use $crate::jobs::{JOB_COLUMNS, JobRow, output_text, source_text};
            use $crate::{FinishedJob, JobStore, Result, StoredJob, millis};
            use ::chorus_core::model::{Job, JobResult, JobStatus};
            use ::chorus_core::{JobId, UserId};
            use ::chrono::{DateTime, Utc};
            use ::sqlx::Row as _;

            impl $store {
                fn job_row(row: &Row<Self>) -> Result<JobRow> {
                    Ok(JobRow {
                        id: JobId(Self::get_id(row, "id")?),
                        owner_id: UserId(Self::get_id(row, "owner_id")?),
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

                fn stored_job(row: Option<Row<Self>>) -> Result<Option<StoredJob>> {
                    row.as_ref().map(|r| Self::job_row(r)?.stored()).transpose()
                }
            }

            #[::async_trait::async_trait]
            impl JobStore for $store {
                async fn create_job(&self, owner: UserId, job: &Job) -> Result<()> {
                    ::sqlx::query(
                        "INSERT INTO jobs \
                         (id, owner_id, status, source, cpu_ms, memory_bytes, submitted_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(Self::id(job.id.0))
                    .bind(Self::id(owner.0))
                    .bind(job.status.as_str())
                    .bind(source_text(&job.source))
                    .bind(job.cpu_ms as i64)
                    .bind(job.memory_bytes as i64)
                    .bind(millis(job.submitted_at))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn job(&self, id: JobId) -> Result<Option<StoredJob>> {
                    let row = ::sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                        .bind(Self::id(id.0))
                        .fetch_optional(self.reader())
                        .await?;
                    Self::stored_job(row)
                }

                async fn jobs_of(&self, owner: UserId, limit: i64) -> Result<Vec<Job>> {
                    ::sqlx::query(&format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE owner_id = $1 \
                         ORDER BY submitted_at DESC, id DESC LIMIT $2"
                    ))
                    .bind(Self::id(owner.0))
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(|r| Ok(Self::job_row(r)?.stored()?.job))
                    .collect()
                }

                async fn jobs_count(&self, owner: UserId) -> Result<i64> {
                    Ok(
                        ::sqlx::query_scalar("SELECT count(*) FROM jobs WHERE owner_id = $1")
                            .bind(Self::id(owner.0))
                            .fetch_one(self.reader())
                            .await?,
                    )
                }

                async fn start_job(&self, id: JobId, at: DateTime<Utc>) -> Result<Option<StoredJob>> {
                    let row = ::sqlx::query(&format!(
                        "UPDATE jobs SET status = $1, started_at = $2 \
                         WHERE id = $3 AND status IN ('queued', 'running') RETURNING {JOB_COLUMNS}"
                    ))
                    .bind(JobStatus::Running.as_str())
                    .bind(millis(at))
                    .bind(Self::id(id.0))
                    .fetch_optional(self.writer())
                    .await?;
                    Self::stored_job(row)
                }

                async fn finish_job(&self, id: JobId, f: &FinishedJob) -> Result<Option<StoredJob>> {
                    let row = ::sqlx::query(&format!(
                        "UPDATE jobs SET status = $1, output = $2, error_code = $3, \
                         error_message = $4, elapsed_ms = $5, started_at = $6, finished_at = $7 \
                         WHERE id = $8 AND status IN ('queued', 'running') RETURNING {JOB_COLUMNS}"
                    ))
                    .bind(f.status.as_str())
                    .bind(output_text(&f.output))
                    .bind(f.error.as_ref().map(|e| e.code.as_str()))
                    .bind(f.error.as_ref().map(|e| e.message.as_str()))
                    .bind(f.elapsed_ms as i64)
                    .bind(millis(f.started_at))
                    .bind(millis(f.finished_at))
                    .bind(Self::id(id.0))
                    .fetch_optional(self.writer())
                    .await?;
                    Self::stored_job(row)
                }

                async fn job_result(&self, id: JobId) -> Result<Option<JobResult>> {
                    let row = ::sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                        .bind(Self::id(id.0))
                        .fetch_optional(self.reader())
                        .await?;
                    match row {
                        Some(row) => Self::job_row(&row)?.result(),
                        None => Ok(None),
                    }
                }

                async fn delete_job(&self, id: JobId) -> Result<bool> {
                    let done = ::sqlx::query("DELETE FROM jobs WHERE id = $1")
                        .bind(Self::id(id.0))
                        .execute(self.writer())
                        .await?;
                    Ok(done.rows_affected() > 0)
                }

                async fn observer_config(&self) -> Result<Option<String>> {
                    Ok(
                        ::sqlx::query_scalar("SELECT config FROM observer_config WHERE id = 1")
                            .fetch_optional(self.reader())
                            .await?,
                    )
                }

                async fn set_observer_config(&self, config: &str) -> Result<()> {
                    ::sqlx::query(
                        "INSERT INTO observer_config (id, config) VALUES (1, $1) \
                         ON CONFLICT (id) DO UPDATE SET config = excluded.config",
                    )
                    .bind(config)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }
            }
        };
    };
}
pub(crate) use impl_job_store;
