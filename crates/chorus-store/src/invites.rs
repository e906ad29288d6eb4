//! Invites: the [`InviteStore`] contract every store also fulfils.

use crate::Result;
use chorus_core::UserId;
use chorus_core::model::User;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Single-use invite codes, for servers where signing up takes one. Every
/// [`crate::Store`] implements it.
///
/// # Contract
///
/// - Only the SHA-256 of a code is stored: the table holds nothing a reader could sign
///   up with.
/// - A code makes at most one account: [`InviteStore::create_user_with_invite`] creates
///   the account and marks the code used in one transaction, and marks it only if it
///   is still unused, so of two sign-ups racing with one code exactly one succeeds.
#[async_trait::async_trait]
pub trait InviteStore: Send + Sync {
    /// Stores an invite valid until `expires_at`, made by `created_by` (`None`: made on
    /// the server's machine, by `chorus users invite`).
    async fn create_invite(
        &self,
        code: &str,
        created_by: Option<UserId>,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;

    /// Whether `code` names an invite that is neither used nor expired at `now`.
    async fn invite_usable(&self, code: &str, now: DateTime<Utc>) -> Result<bool>;

    /// Creates an account with `password_hash` and uses up the invite `code`, both or
    /// neither: `Conflict("username")` when the name is taken; `NotFound("invite")` when
    /// the code is unknown, used, or expired at `now`.
    async fn create_user_with_invite(
        &self,
        username: &str,
        password_hash: &str,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<User>;
}

/// What is stored of an invite code: its SHA-256, in hex. Codes are random (128 bits),
/// so a fast hash is enough: there is nothing to guess from it.
pub(crate) fn digest(code: &str) -> String {
    Sha256::digest(code.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
