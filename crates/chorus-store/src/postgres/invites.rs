//! [`InviteStore`] on PostgreSQL.

use super::{PostgresStore, insert_user};
use crate::invites::digest;
use crate::{InviteStore, Result, StoreError, millis};
use async_trait::async_trait;
use chorus_core::UserId;
use chorus_core::model::User;
use chrono::{DateTime, Utc};

#[async_trait]
impl InviteStore for PostgresStore {
    async fn create_invite(
        &self,
        code: &str,
        created_by: Option<UserId>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let _timer = crate::QueryTimer::start("create_invite");
        sqlx::query(
            "INSERT INTO invites (code_sha256, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(digest(code))
        .bind(created_by.map(|u| u.0))
        .bind(millis(Utc::now()))
        .bind(millis(expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn invite_usable(&self, code: &str, now: DateTime<Utc>) -> Result<bool> {
        let _timer = crate::QueryTimer::start("invite_usable");
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM invites WHERE code_sha256 = $1 AND used_by IS NULL AND expires_at > $2",
        )
        .bind(digest(code))
        .bind(millis(now))
        .fetch_optional(&self.pool)
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
        let _timer = crate::QueryTimer::start("create_user_with_invite");
        let now = millis(now);
        let mut tx = self.pool.begin().await?;
        let user = insert_user(&mut *tx, username, password_hash, now).await?;
        // Another sign-up with the same code waits here for the first one's row lock;
        // once that commits, the row no longer matches `used_by IS NULL` (READ
        // COMMITTED evaluates the condition again on the new row version), so nothing
        // is updated and this account is rolled back.
        let used = sqlx::query(
            "UPDATE invites SET used_by = $1, used_at = $2 \
             WHERE code_sha256 = $3 AND used_by IS NULL AND expires_at > $2",
        )
        .bind(user.id.0)
        .bind(now)
        .bind(digest(code))
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Err(StoreError::NotFound("invite"));
        }
        tx.commit().await?;
        Ok(user)
    }
}
