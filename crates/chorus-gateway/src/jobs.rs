//! The HTTP API of jobs and the observer under `/api/v1`: seal credentials, submit,
//! list, read, read the result of, and erase jobs; read the observer's measurements
//! and, for administrators, change its configuration. Jobs belong to their owner: any
//! other user gets `not_found`, as if they did not exist.
//!
//! The gateway never runs a job: it stores it, queues a request on the log, and reads
//! what the workers and the results recorder wrote. It seals credentials for the
//! caller (so that no client needs the key); sealed values pass through on the log
//! only, and only a worker opens them, for the job's owner alone.

use crate::auth::{AdminUser, AuthUser};
use crate::error::ApiError;
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chorus_config::ObserverConfig;
use chorus_core::event::{JobRequest, ObserverReport, decode, encode};
use chorus_core::model::{Job, JobResult, JobSource, JobStatus};
use chorus_core::{ErrorCode, JobId};
use chorus_jobs::crypto::{JOB_CREDENTIALS, check_sealed};
use chorus_jobs::git::check_source;
use chorus_jobs::observer::current_config;
use chorus_log::consume::payload;
use chorus_log::{LogError, Outgoing, Subscription, consume, each};
use chorus_store::StoredJob;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::{Arc, PoisonError, RwLock};
use tokio_util::sync::CancellationToken;

type Shared = State<Arc<AppState>>;

/// Jobs listed by `GET /jobs`, newest first.
const LIST_LIMIT: i64 = 1000;

/// The observer's latest report, as this gateway last read it from the decisions topic.
#[derive(Clone, Default)]
pub struct ObserverView(Arc<RwLock<Option<ObserverReport>>>);

impl ObserverView {
    /// The latest report, if any arrived.
    pub fn get(&self) -> Option<ObserverReport> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, report: ObserverReport) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(report);
    }
}

/// Routes of jobs and the observer, relative to `/api/v1`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/jobs", get(list_jobs).post(submit))
        .route("/jobs/credentials", post(seal_credentials))
        .route("/jobs/{id}", get(get_job).delete(delete_job))
        .route("/jobs/{id}/result", get(get_result))
        .route("/observer", get(get_observer))
        .route("/observer/config", put(put_observer_config))
}

/// Follows the observer's decisions (a consumer group per node: every gateway reads
/// all of them) to answer `GET /observer`.
pub async fn follow_observer(
    state: Arc<AppState>,
    stop: CancellationToken,
) -> Result<(), LogError> {
    let topic = state.topics.observer_decisions();
    let sub = Subscription {
        name: "observer-view",
        group: format!("{topic}.{}", state.node),
        topics: vec![topic],
        batch: 256,
        dead_letter: None,
    };
    let log = state.log.clone();
    let follow = each(move |report| {
        state.observer.set(report);
        std::future::ready(Ok::<_, LogError>(Vec::new()))
    });
    consume(log, sub, payload(decode), follow, stop.cancelled()).await
}

/// A job as its owner submits it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    source: JobSource,
    #[serde(default)]
    input: Value,
    credentials: Option<String>,
    cpu_ms: Option<u64>,
    memory_bytes: Option<u64>,
}

async fn submit(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiJson(s): ApiJson<Submission>,
) -> Result<Response, ApiError> {
    let config = &state.jobs;
    match &s.source {
        JobSource::Script(text) => {
            if text.trim().is_empty() || text.len() > config.max_source_bytes {
                return Err(ApiError::bad_request(format!(
                    "source.script must be 1 to {} bytes",
                    config.max_source_bytes
                )));
            }
        }
        JobSource::Git(git) => {
            check_source(config, git).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
    }
    if let Some(c) = &s.credentials {
        check_sealed(c)?;
    }
    let cpu_ms = s.cpu_ms.unwrap_or(config.cpu_ms);
    let memory_bytes = s.memory_bytes.unwrap_or(config.memory_bytes);
    if !(1..=config.max_cpu_ms).contains(&cpu_ms) {
        return Err(ApiError::bad_request(format!(
            "cpu_ms must be 1 to {}",
            config.max_cpu_ms
        )));
    }
    if !(256 * 1024..=config.max_memory_bytes).contains(&memory_bytes) {
        return Err(ApiError::bad_request(format!(
            "memory_bytes must be 262144 to {}",
            config.max_memory_bytes
        )));
    }
    let job = Job {
        id: JobId::new(),
        status: JobStatus::Queued,
        source: s.source,
        cpu_ms,
        memory_bytes,
        submitted_at: Utc::now(),
        started_at: None,
        finished_at: None,
    };
    let store = state.directory.store();
    let stored = store.jobs_count(me.id).await?;
    if stored >= config.max_stored_per_user as i64 {
        return Err(ApiError::limit_reached(format!(
            "you have {stored} jobs stored, the most one user may; erase some first"
        )));
    }
    store.create_job(me.id, &job).await?;
    let request = JobRequest {
        job_id: job.id,
        owner_id: me.id,
        source: job.source.clone(),
        input: s.input,
        credentials: s.credentials,
        cpu_ms,
        memory_bytes,
        submitted_at: job.submitted_at,
    };
    let record = Outgoing::new(
        state.topics.jobs_requests(),
        job.id.0.as_bytes().to_vec(),
        encode(&request),
    );
    if let Err(e) = state.log.publish(vec![record]).await {
        // Not queued: leave no job behind that would wait for ever.
        if let Err(e) = store.delete_job(job.id).await {
            tracing::warn!(job_id = %job.id, error = %e, "unqueued job not erased");
        }
        return Err(e.into());
    }
    metrics::counter!("chorus_jobs_submitted_total").increment(1);
    Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": job.id }))).into_response())
}

/// Credentials to seal for the caller.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plaintext {
    plaintext: String,
}

/// Seals credentials for the caller: the value opens in the caller's jobs only.
async fn seal_credentials(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiJson(p): ApiJson<Plaintext>,
) -> Result<Json<Value>, ApiError> {
    let key = state.jobs_key.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "the server has no credentials key (CHORUS_JOBS_KEY): jobs cannot have credentials",
        )
    })?;
    let sealed = key.seal(JOB_CREDENTIALS, me.id, p.plaintext.as_bytes())?;
    Ok(Json(json!({ "credentials": sealed })))
}

/// The caller's job `id`, or `not_found`.
async fn own_job(
    state: &AppState,
    me: &chorus_core::model::User,
    id: JobId,
) -> Result<StoredJob, ApiError> {
    match state.directory.store().job(id).await? {
        Some(stored) if stored.owner_id == me.id => Ok(stored),
        _ => Err(ApiError::not_found(format!("job {id} does not exist"))),
    }
}

async fn list_jobs(State(state): Shared, AuthUser(me): AuthUser) -> Result<Json<Value>, ApiError> {
    let jobs = state.directory.store().jobs_of(me.id, LIST_LIMIT).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

async fn get_job(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(own_job(&state, &me, id).await?.job))
}

async fn get_result(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<JobId>,
) -> Result<Json<JobResult>, ApiError> {
    let stored = own_job(&state, &me, id).await?;
    if !stored.job.status.is_finished() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("job {id} is {}: no result yet", stored.job.status.as_str()),
        ));
    }
    state
        .directory
        .store()
        .job_result(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id} does not exist")))
}

async fn delete_job(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<JobId>,
) -> Result<StatusCode, ApiError> {
    own_job(&state, &me, id).await?;
    state.directory.store().delete_job(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_observer(
    State(state): Shared,
    AuthUser(_): AuthUser,
) -> Result<Json<Value>, ApiError> {
    let config = current_config(state.directory.store().as_ref(), &state.jobs.observer).await?;
    let report = state.observer.get();
    let r = report.clone().unwrap_or_default();
    let last_decision = report.map(|r| {
        json!({ "action": r.action, "desired_workers": r.desired_workers, "panic": r.panic, "reason": r.reason, "at": r.at })
    });
    Ok(Json(json!({
        "arrival_rate": r.arrival_rate,
        "service_rate": r.service_rate,
        "mean_response_ms": r.mean_response_ms,
        "p95_response_ms": r.p95_response_ms,
        "queue_depth": r.queue_depth,
        "workers": r.workers,
        "desired_workers": r.desired_workers,
        "panic": r.panic,
        "last_decision": last_decision,
        "config": config,
    })))
}

/// Changes to the observer's configuration; absent fields keep their value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObserverChange {
    min_workers: Option<u32>,
    max_workers: Option<u32>,
    target_response_ms: Option<u64>,
    stable_window_secs: Option<u64>,
    panic_window_secs: Option<u64>,
    panic_threshold: Option<f64>,
    target_utilization: Option<f64>,
    tick_ms: Option<u64>,
}

async fn put_observer_config(
    State(state): Shared,
    AdminUser(me): AdminUser,
    ApiJson(change): ApiJson<ObserverChange>,
) -> Result<Json<ObserverConfig>, ApiError> {
    let store = state.directory.store();
    let mut config = current_config(store.as_ref(), &state.jobs.observer).await?;
    macro_rules! apply {
        ($($field:ident),*) => { $(if let Some(v) = change.$field { config.$field = v; })* };
    }
    apply!(
        min_workers,
        max_workers,
        target_response_ms,
        stable_window_secs,
        panic_window_secs,
        panic_threshold,
        target_utilization,
        tick_ms
    );
    config
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let text = serde_json::to_string(&config).map_err(|e| ApiError::internal(&e))?;
    store.set_observer_config(&text).await?;
    tracing::info!(admin = %me.id, ?config, "observer configuration changed");
    Ok(Json(config))
}
