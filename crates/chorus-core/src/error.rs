//! Stable error codes of the public protocol.
//!
//! Every error a client sees, over HTTP or WebSocket, carries one of these codes and a
//! message for people. Codes are part of the protocol: never rename one.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A machine-readable error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, a missing or invalid field.
    BadRequest,
    /// Missing, malformed, expired or forged token; wrong credentials.
    Unauthorized,
    /// Authenticated but not allowed: not a member, not the owner.
    Forbidden,
    /// No such resource.
    NotFound,
    /// The request clashes with existing state (a username taken).
    Conflict,
    /// A body or frame over the configured limit.
    TooLarge,
    /// Over the rate limit; comes with `retry_after_ms`.
    RateLimited,
    /// A count the server bounds is reached (sessions per user, members of a group,
    /// groups or stored jobs per user): nothing more until something goes.
    LimitReached,
    /// A WebSocket frame whose `type` the server does not know.
    UnknownType,
    /// An outgoing script blocked the message.
    Blocked,
    /// Signing up is closed on this server (`POST /auth/register`).
    RegistrationClosed,
    /// Signing up takes an invite, and none was given, or it is unknown, used or
    /// expired.
    InvalidInvite,
    /// A dependency is unavailable, or the server is too busy; try again (after
    /// `retry_after_ms` when given).
    Unavailable,
    /// A fault on the server's side.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::LimitReached => "limit_reached",
            Self::UnknownType => "unknown_type",
            Self::Blocked => "blocked",
            Self::RegistrationClosed => "registration_closed",
            Self::InvalidInvite => "invalid_invite",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::UnknownType => 400,
            Self::Unauthorized => 401,
            Self::Forbidden
            | Self::Blocked
            | Self::LimitReached
            | Self::RegistrationClosed
            | Self::InvalidInvite => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::TooLarge,
            ErrorCode::RateLimited,
            ErrorCode::LimitReached,
            ErrorCode::UnknownType,
            ErrorCode::Blocked,
            ErrorCode::RegistrationClosed,
            ErrorCode::InvalidInvite,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
