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

/// A row's values, read by each backend with its own id type.
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
    pub fn stored(&self) -> Result<StoredJob> {
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
    pub fn result(&self) -> Result<Option<JobResult>> {
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
