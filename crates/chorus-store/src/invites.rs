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

/// Emits `impl InviteStore for $store` for a `$store` implementing
/// [`crate::backend::Backend`] (see there).
macro_rules! impl_invite_store {
    ($store:ty) => {
        const _: () = {
            use ::chorus_core::UserId;
            use ::chorus_core::model::User;
            use ::chrono::{DateTime, Utc};
            use $crate::backend::Backend;
            use $crate::invites::digest;
            use $crate::{InviteStore, QueryTimer, Result, StoreError, millis};

            #[::async_trait::async_trait]
            impl InviteStore for $store {
                async fn create_invite(
                    &self,
                    code: &str,
                    created_by: Option<UserId>,
                    expires_at: DateTime<Utc>,
                ) -> Result<()> {
                    let _timer = QueryTimer::start("create_invite");
                    ::sqlx::query(
                        "INSERT INTO invites (code_sha256, created_by, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(digest(code))
                    .bind(created_by.map(|u| Self::id(u.0)))
                    .bind(millis(Utc::now()))
                    .bind(millis(expires_at))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn invite_usable(&self, code: &str, now: DateTime<Utc>) -> Result<bool> {
                    let _timer = QueryTimer::start("invite_usable");
                    let found = ::sqlx::query(
                        "SELECT 1 FROM invites \
                         WHERE code_sha256 = $1 AND used_by IS NULL AND expires_at > $2",
                    )
                    .bind(digest(code))
                    .bind(millis(now))
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(found.is_some())
                }

                async fn create_user_with_invite(
                    &self,
                    username: &str,
                    password_hash: &str,
                    code: &str,
                    now: DateTime<Utc>,
                ) -> Result<User> {
                    let _timer = QueryTimer::start("create_user_with_invite");
                    let now = millis(now);
                    let mut tx = self.write().await?;
                    let user = Self::insert_user(&mut *tx, username, password_hash, now).await?;
                    // On SQLite one writer at a time: the code is checked and used up with
                    // nothing else writing in between. On PostgreSQL another sign-up with
                    // the same code waits here for the first one's row lock; once that
                    // commits, the row no longer matches `used_by IS NULL` (READ COMMITTED
                    // evaluates the condition again on the new row version), so nothing is
                    // updated and this account is rolled back.
                    let used = ::sqlx::query(
                        "UPDATE invites SET used_by = $1, used_at = $2 \
                         WHERE code_sha256 = $3 AND used_by IS NULL AND expires_at > $2",
                    )
                    .bind(Self::id(user.id.0))
                    .bind(now)
                    .bind(digest(code))
                    .execute(&mut *tx)
                    .await?;
                    if used.rows_affected() != 1 {
                        // Dropping the transaction rolls the account back.
                        return Err(StoreError::NotFound("invite"));
                    }
                    tx.commit().await?;
                    Ok(user)
                }
            }
        };
    };
}
pub(crate) use impl_invite_store;
