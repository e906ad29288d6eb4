//! One mapping from every failure to the protocol's error codes.
//!
//! Handlers return [`ApiError`]; internal failures are logged here, once, at the
//! boundary, and reach the client as `internal` or `unavailable` without details.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_core::ErrorCode;
use chorus_core::wire::ServerFrame;
use chorus_jobs::crypto::CryptoError;
use chorus_log::LogError;
use chorus_registry::RegistryError;
use chorus_store::StoreError;
use serde_json::json;

/// An error as the client sees it: a stable code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// Stable machine code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// When to retry: always with `rate_limited`, sometimes with `unavailable`.
    pub retry_after_ms: Option<u64>,
    /// A script that does not compile: where (1-based).
    pub line: Option<u32>,
    /// A script that does not compile: where on the line (1-based).
    pub column: Option<u32>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
            line: None,
            column: None,
        }
    }

    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// `rate_limited` for sends, retry after `retry_after_ms`.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Self::too_many("messages", retry_after_ms)
    }

    /// `rate_limited`: too many of `what`, retry after `retry_after_ms`.
    pub fn too_many(what: &str, retry_after_ms: u64) -> Self {
        Self::new(
            ErrorCode::RateLimited,
            format!("too many {what}; retry in {retry_after_ms} ms"),
        )
        .retry_after(retry_after_ms)
    }

    /// The same error, telling the client when to retry (`retry_after_ms` and a
    /// `Retry-After` header).
    pub fn retry_after(mut self, retry_after_ms: u64) -> Self {
        self.retry_after_ms = Some(retry_after_ms);
        self
    }

    /// `limit_reached`: a bounded count is full.
    pub fn limit_reached(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::LimitReached, message)
    }

    /// `internal`, logging the cause (which the client does not see).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// `unavailable`, logging the cause.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "dependency unavailable");
        Self::new(
            ErrorCode::Unavailable,
            "a dependency is unavailable; try again",
        )
    }

    /// The error as a WebSocket frame, answering the send `client_msg_id` if any.
    pub fn to_frame(&self, client_msg_id: Option<String>) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message.clone(),
            client_msg_id,
            retry_after_ms: self.retry_after_ms,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(ms) = self.retry_after_ms {
            error["retry_after_ms"] = json!(ms);
        }
        if let Some(line) = self.line {
            error["line"] = json!(line);
        }
        if let Some(column) = self.column {
            error["column"] = json!(column);
        }
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(ms) = self.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => {
                Self::new(ErrorCode::Conflict, format!("{what} already exists"))
            }
            StoreError::NotFound(what) => Self::not_found(format!("{what} not found")),
            other if other.is_unavailable() => Self::unavailable(&other),
            other => Self::internal(&other),
        }
    }
}

impl From<CryptoError> for ApiError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::TooLarge => Self::new(ErrorCode::TooLarge, e.to_string()),
            // The key was parsed when the node started.
            CryptoError::BadKey => Self::internal(&e),
            CryptoError::OldFormat | CryptoError::Malformed | CryptoError::DoesNotOpen => {
                Self::bad_request(format!("credentials: {e}"))
            }
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        Self::unavailable(&e)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        Self::unavailable(&e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(ErrorCode::TooLarge, "request body is over the limit");
        }
        Self::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}
