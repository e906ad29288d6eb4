//! [`InviteStore`] on SQLite.

use super::{SqliteStore, insert_user};
use crate::invites::digest;
use crate::{InviteStore, Result, StoreError, millis};
use async_trait::async_trait;
use chorus_core::UserId;
use chorus_core::model::User;
use chrono::{DateTime, Utc};

#[async_trait]
impl InviteStore for SqliteStore {
    async fn create_invite(
        &self,
        code: &str,
        created_by: Option<UserId>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let _timer = crate::QueryTimer::start("create_invite");
        sqlx::query(
            "INSERT INTO invites (code_sha256, created_by, created_at, expires_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(digest(code))
        .bind(created_by.map(|u| u.to_string()))
        .bind(millis(Utc::now()))
        .bind(millis(expires_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn invite_usable(&self, code: &str, now: DateTime<Utc>) -> Result<bool> {
        let _timer = crate::QueryTimer::start("invite_usable");
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM invites WHERE code_sha256 = ? AND used_by IS NULL AND expires_at > ?",
        )
        .bind(digest(code))
        .bind(millis(now))
        .fetch_optional(&self.reader)
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
        // One writer at a time: the code is checked and used up with nothing else
        // writing in between.
        let mut tx = self.write().await?;
        let user = insert_user(&mut *tx, username, password_hash, now).await?;
        let used = sqlx::query(
            "UPDATE invites SET used_by = ?, used_at = ? \
             WHERE code_sha256 = ? AND used_by IS NULL AND expires_at > ?",
        )
        .bind(user.id.to_string())
        .bind(now)
        .bind(digest(code))
        .bind(now)
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
