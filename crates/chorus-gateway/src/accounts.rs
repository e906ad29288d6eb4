//! Signing up and signing in under `/api/v1`: `POST /auth/register`, `POST /auth/login`,
//! `GET /auth/options` (how this server takes sign-ups) and, for administrators,
//! `POST /invites`.
//!
//! Both are bounded (see [`crate::throttle`]): sign-ups per client address, failed
//! sign-ins per address and per username, and every password hash by the hashing
//! queue ([`crate::auth::Hashing`]). Sign-up may be closed, or take a single-use
//! invite (`auth.registration`).

use crate::auth::AdminUser;
use crate::error::ApiError;
use crate::http::ApiJson;
use crate::state::AppState;
use crate::throttle::ClientAddr;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chorus_config::Registration;
use chorus_core::ErrorCode;
use chorus_core::model::User;
use chorus_store::StoreError;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

type Shared = State<Arc<AppState>>;

/// Routes of accounts, relative to `/api/v1`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/options", get(options))
        .route("/invites", post(create_invite))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct SignUp {
    username: String,
    password: String,
    /// Required when sign-up is by invite; ignored otherwise.
    invite: Option<String>,
}

/// Whether `name` may be a username: 3 to 32 of `A-Z a-z 0-9 _ . -`.
pub(crate) fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn session_body(state: &AppState, user: User) -> serde_json::Value {
    let token = state.tokens.issue(&user);
    json!({ "user": user, "token": token })
}

fn taken() -> ApiError {
    ApiError::new(ErrorCode::Conflict, "username is taken")
}

fn invalid_invite() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidInvite,
        "the invite code is unknown, used or expired",
    )
}

async fn register(
    State(state): Shared,
    addr: ClientAddr,
    ApiJson(req): ApiJson<SignUp>,
) -> Result<Response, ApiError> {
    check_credentials(&req.username, &req.password)?;
    let invite = required_invite(state.registration, req.invite.as_deref())?;
    let counted = state.auth_limits.sign_up(addr)?;
    match create_account(&state, &req.username, req.password, invite).await {
        Ok(user) => Ok((StatusCode::CREATED, Json(session_body(&state, user))).into_response()),
        Err(e) => {
            if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) {
                counted.not_counted();
            }
            Err(e)
        }
    }
}

fn check_credentials(username: &str, password: &str) -> Result<(), ApiError> {
    if !valid_username(username) {
        return Err(ApiError::bad_request(
            "username must be 3 to 32 characters of A-Z, a-z, 0-9, `_`, `.`, `-`",
        ));
    }
    if !(8..=1024).contains(&password.len()) {
        return Err(ApiError::bad_request("password must be 8 to 1024 bytes"));
    }
    Ok(())
}

/// The invite code a sign-up needs here (`None`: it needs none), or why it cannot be
/// made at all.
fn required_invite(
    registration: Registration,
    invite: Option<&str>,
) -> Result<Option<&str>, ApiError> {
    match (registration, invite.map(str::trim)) {
        (Registration::Open, _) => Ok(None),
        (Registration::Closed, _) => Err(ApiError::new(
            ErrorCode::RegistrationClosed,
            "this server does not take sign-ups",
        )),
        (Registration::Invite, Some(code)) if !code.is_empty() => Ok(Some(code)),
        (Registration::Invite, _) => Err(ApiError::new(
            ErrorCode::InvalidInvite,
            "this server takes sign-ups by invite: an invite code is required",
        )),
    }
}

/// Makes the account, using up `invite` if given. A taken name or an unusable code is
/// found before the (slow) hash, and again, atomically, when the account is written.
async fn create_account(
    state: &AppState,
    username: &str,
    password: String,
    invite: Option<&str>,
) -> Result<User, ApiError> {
    let store = state.directory.store();
    if store.account(username).await?.is_some() {
        return Err(taken());
    }
    if let Some(code) = invite
        && !store.invite_usable(code, Utc::now()).await?
    {
        return Err(invalid_invite());
    }
    let hash = state.hashing.hash(password).await?;
    let created = match invite {
        Some(code) => {
            store
                .create_user_with_invite(username, &hash, code, Utc::now())
                .await
        }
        None => store.create_user(username, &hash).await,
    };
    created.map_err(|e| match e {
        StoreError::Conflict(_) => taken(),
        StoreError::NotFound("invite") => invalid_invite(),
        other => other.into(),
    })
}

async fn login(
    State(state): Shared,
    addr: ClientAddr,
    ApiJson(c): ApiJson<Credentials>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let attempt = state.auth_limits.login(addr, &c.username)?;
    match check_password(&state, c).await {
        Ok(Some(user)) => {
            attempt.not_a_failure();
            Ok(Json(session_body(&state, user)))
        }
        Ok(None) => {
            attempt.failed();
            Err(ApiError::unauthorized("invalid username or password"))
        }
        Err(e) => {
            attempt.not_a_failure();
            Err(e)
        }
    }
}

/// The user whose password this is, if it is right.
async fn check_password(state: &AppState, c: Credentials) -> Result<Option<User>, ApiError> {
    let account = state.directory.store().account(&c.username).await?;
    let hash = account.as_ref().map(|a| a.password_hash.clone());
    let right = state.hashing.verify(c.password, hash).await?;
    Ok(account.filter(|_| right).map(|a| a.user))
}

async fn options(State(state): Shared) -> Json<serde_json::Value> {
    Json(json!({ "registration": state.registration }))
}

async fn create_invite(
    State(state): Shared,
    AdminUser(admin): AdminUser,
) -> Result<Response, ApiError> {
    let code = new_invite_code();
    let expires_at = expiry(Utc::now(), state.invite_ttl);
    state
        .directory
        .store()
        .create_invite(&code, Some(admin.id), expires_at)
        .await?;
    tracing::info!(admin = %admin.id, %expires_at, "invite created");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "code": code, "expires_at": expires_at })),
    )
        .into_response())
}

/// A new invite code: 128 random bits, as 32 hex digits.
pub fn new_invite_code() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// When an invite made at `now` expires, to the millisecond (what the store keeps).
pub fn expiry(now: DateTime<Utc>, ttl: std::time::Duration) -> DateTime<Utc> {
    let ms = now
        .timestamp_millis()
        .saturating_add(ttl.as_millis() as i64);
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}
