//! What is known of uploaded files: the [`AttachmentStore`] contract every store also
//! fulfils. The bytes are not here: they are in the object store, under a key made
//! from the attachment's id.

use crate::Result;
use chorus_core::model::Attachment;
use chorus_core::{AttachmentId, UserId};
use chrono::{DateTime, Utc};

/// An attachment with what only the server needs to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAttachment {
    /// The shape messages carry.
    pub attachment: Attachment,
    /// Who uploaded it.
    pub owner_id: UserId,
    /// Whether its bytes are all written; an upload under way, or cut short, is not.
    pub ready: bool,
    /// When the upload began.
    pub created_at: DateTime<Utc>,
}

/// Uploaded files and the messages that carry them. Every [`crate::Store`] implements
/// it.
///
/// # Contract
///
/// - An upload is recorded before its bytes are written
///   ([`AttachmentStore::begin_attachment`]) and completed after
///   ([`AttachmentStore::finish_attachment`]); until then it is not ready, cannot be
///   sent and counts against no quota. A crash in between leaves a row that
///   [`AttachmentStore::expired_attachments`] finds.
/// - The quota check and the completion are one step: of two uploads racing for the
///   last bytes of a quota, at most the one that fits completes.
/// - [`crate::Store::append_messages`] links each new message to the attachments it
///   carries, in the message's transaction: a file is readable by the members of the
///   conversations of the messages carrying it, and a linked file is never expired.
#[async_trait::async_trait]
pub trait AttachmentStore: Send + Sync {
    /// Records an upload that is beginning (not ready, size 0).
    async fn begin_attachment(
        &self,
        id: AttachmentId,
        owner: UserId,
        name: &str,
        content_type: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Completes an upload of `size` bytes with this digest, if the owner's ready
    /// attachments and it together stay within `quota` bytes; `false` (nothing changed)
    /// when they would not.
    async fn finish_attachment(
        &self,
        id: AttachmentId,
        size: i64,
        sha256: &str,
        quota: i64,
    ) -> Result<bool>;
    /// Forgets an attachment no message carries; `false` when a message carries it
    /// (then nothing changed) or it is gone.
    async fn remove_attachment(&self, id: AttachmentId) -> Result<bool>;
    /// An attachment by id, ready or not.
    async fn attachment(&self, id: AttachmentId) -> Result<Option<StoredAttachment>>;
    /// The ready attachments among `ids` that `owner` uploaded, in the order of `ids`.
    async fn owned_attachments(
        &self,
        owner: UserId,
        ids: &[AttachmentId],
    ) -> Result<Vec<Attachment>>;
    /// Bytes of `owner`'s ready attachments.
    async fn attachment_bytes(&self, owner: UserId) -> Result<i64>;
    /// Whether `user` is a member of a conversation holding a message that carries
    /// the attachment.
    async fn shares_attachment(&self, id: AttachmentId, user: UserId) -> Result<bool>;
    /// Attachments begun before `before` that no message carries, at most `limit`.
    async fn expired_attachments(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<AttachmentId>>;
    /// How many ready attachments are stored, and their bytes.
    async fn attachment_totals(&self) -> Result<(i64, i64)>;
}

/// The attachments of a message as stored in its row: `None` for none, else a JSON
/// array of their shapes.
pub(crate) fn to_column(attachments: &[Attachment]) -> Option<String> {
    (!attachments.is_empty())
        .then(|| serde_json::to_string(attachments).expect("attachments always serialize"))
}

/// Reads the column written by [`to_column`].
pub(crate) fn from_column(column: Option<&str>) -> Result<Vec<Attachment>> {
    column.map_or(Ok(Vec::new()), |json| {
        serde_json::from_str(json)
            .map_err(|e| crate::StoreError::Corrupt(format!("attachments: {e}")))
    })
}

/// Emits `impl AttachmentStore for $store` for a `$store` implementing
/// [`crate::backend::Backend`] (see there).
macro_rules! impl_attachment_store {
    ($store:ty) => {
        const _: () = {
            use ::chorus_core::model::Attachment;
            use ::chorus_core::{AttachmentId, UserId};
            use ::chrono::{DateTime, Utc};
            use ::sqlx::Row as _;
            use $crate::backend::{Backend, Row};
            use $crate::{
                AttachmentStore, QueryTimer, Result, StoredAttachment, from_millis, millis,
            };

            const COLUMNS: &str =
                "id, owner_id, name, content_type, size, sha256, ready, created_at";

            fn attachment_row(row: &Row<$store>) -> Result<StoredAttachment> {
                Ok(StoredAttachment {
                    attachment: Attachment {
                        attachment_id: AttachmentId(<$store>::get_id(row, "id")?),
                        name: row.try_get("name")?,
                        content_type: row.try_get("content_type")?,
                        size: row.try_get("size")?,
                        sha256: row.try_get("sha256")?,
                    },
                    owner_id: UserId(<$store>::get_id(row, "owner_id")?),
                    ready: row.try_get("ready")?,
                    created_at: from_millis(row.try_get("created_at")?)?,
                })
            }

            #[::async_trait::async_trait]
            impl AttachmentStore for $store {
                async fn begin_attachment(
                    &self,
                    id: AttachmentId,
                    owner: UserId,
                    name: &str,
                    content_type: &str,
                    now: DateTime<Utc>,
                ) -> Result<()> {
                    let _timer = QueryTimer::start("begin_attachment");
                    ::sqlx::query(
                        "INSERT INTO attachments (id, owner_id, name, content_type, created_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(Self::id(id.0))
                    .bind(Self::id(owner.0))
                    .bind(name)
                    .bind(content_type)
                    .bind(millis(now))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn finish_attachment(
                    &self,
                    id: AttachmentId,
                    size: i64,
                    sha256: &str,
                    quota: i64,
                ) -> Result<bool> {
                    let _timer = QueryTimer::start("finish_attachment");
                    let mut tx = self.write().await?;
                    // The owner's row is held until the end: two uploads of one owner
                    // complete one after the other, each counting the other's bytes.
                    let owner = ::sqlx::query(&format!(
                        "SELECT u.id FROM users u JOIN attachments a ON a.owner_id = u.id \
                         WHERE a.id = $1{}",
                        Self::FOR_UPDATE
                    ))
                    .bind(Self::id(id.0))
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(owner) = owner else {
                        return Ok(false);
                    };
                    let owner = Self::get_id(&owner, "id")?;
                    let used: i64 = ::sqlx::query(
                        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used FROM attachments \
                         WHERE owner_id = $1 AND ready",
                    )
                    .bind(Self::id(owner))
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("used")?;
                    if used + size > quota {
                        return Ok(false);
                    }
                    let done = ::sqlx::query(
                        "UPDATE attachments SET size = $2, sha256 = $3, ready = $4 \
                         WHERE id = $1 AND NOT ready",
                    )
                    .bind(Self::id(id.0))
                    .bind(size)
                    .bind(sha256)
                    .bind(true)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn remove_attachment(&self, id: AttachmentId) -> Result<bool> {
                    let _timer = QueryTimer::start("remove_attachment");
                    let done = ::sqlx::query(
                        "DELETE FROM attachments WHERE id = $1 AND NOT EXISTS \
                         (SELECT 1 FROM message_attachments WHERE attachment_id = $1)",
                    )
                    .bind(Self::id(id.0))
                    .execute(self.writer())
                    .await?;
                    Ok(done.rows_affected() == 1)
                }

                async fn attachment(&self, id: AttachmentId) -> Result<Option<StoredAttachment>> {
                    let _timer = QueryTimer::start("attachment");
                    ::sqlx::query(&format!("SELECT {COLUMNS} FROM attachments WHERE id = $1"))
                        .bind(Self::id(id.0))
                        .fetch_optional(self.reader())
                        .await?
                        .as_ref()
                        .map(attachment_row)
                        .transpose()
                }

                async fn owned_attachments(
                    &self,
                    owner: UserId,
                    ids: &[AttachmentId],
                ) -> Result<Vec<Attachment>> {
                    let _timer = QueryTimer::start("owned_attachments");
                    let mut found = Vec::with_capacity(ids.len());
                    // At most ten per message: one lookup each is simpler than a list
                    // bound in the way each backend wants it, and as fast.
                    for id in ids {
                        let row = ::sqlx::query(&format!(
                            "SELECT {COLUMNS} FROM attachments \
                             WHERE id = $1 AND owner_id = $2 AND ready"
                        ))
                        .bind(Self::id(id.0))
                        .bind(Self::id(owner.0))
                        .fetch_optional(self.reader())
                        .await?;
                        if let Some(row) = row {
                            found.push(attachment_row(&row)?.attachment);
                        }
                    }
                    Ok(found)
                }

                async fn attachment_bytes(&self, owner: UserId) -> Result<i64> {
                    let _timer = QueryTimer::start("attachment_bytes");
                    Ok(::sqlx::query(
                        "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used FROM attachments \
                         WHERE owner_id = $1 AND ready",
                    )
                    .bind(Self::id(owner.0))
                    .fetch_one(self.reader())
                    .await?
                    .try_get("used")?)
                }

                async fn shares_attachment(&self, id: AttachmentId, user: UserId) -> Result<bool> {
                    let _timer = QueryTimer::start("shares_attachment");
                    let found = ::sqlx::query(
                        "SELECT 1 FROM message_attachments ma JOIN members m \
                         ON m.conversation_id = ma.conversation_id \
                         WHERE ma.attachment_id = $1 AND m.user_id = $2 LIMIT 1",
                    )
                    .bind(Self::id(id.0))
                    .bind(Self::id(user.0))
                    .fetch_optional(self.reader())
                    .await?;
                    Ok(found.is_some())
                }

                async fn expired_attachments(
                    &self,
                    before: DateTime<Utc>,
                    limit: i64,
                ) -> Result<Vec<AttachmentId>> {
                    let _timer = QueryTimer::start("expired_attachments");
                    ::sqlx::query(
                        "SELECT id FROM attachments a WHERE created_at < $1 AND NOT EXISTS \
                         (SELECT 1 FROM message_attachments ma WHERE ma.attachment_id = a.id) \
                         ORDER BY created_at LIMIT $2",
                    )
                    .bind(millis(before))
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(|row| Ok(AttachmentId(Self::get_id(row, "id")?)))
                    .collect()
                }

                async fn attachment_totals(&self) -> Result<(i64, i64)> {
                    let _timer = QueryTimer::start("attachment_totals");
                    let row = ::sqlx::query(
                        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes \
                         FROM attachments WHERE ready",
                    )
                    .fetch_one(self.reader())
                    .await?;
                    Ok((row.try_get("n")?, row.try_get("bytes")?))
                }
            }
        };
    };
}
pub(crate) use impl_attachment_store;
