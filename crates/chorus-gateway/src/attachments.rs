//! Attachments: uploads streamed into the object store, downloads (whole or ranged)
//! streamed out of it, thumbnails, and the sweep of uploads never sent.
//!
//! The bytes never ride the event log: a message carries the attachments' shapes
//! (id, name, type, size, digest), checked by [`crate::send`] against the database.
//! Who may read a file is decided on every request: its uploader, and the members of
//! any conversation holding a message that carries it; anyone else gets `not_found`,
//! as for a file that does not exist.

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::http::{ApiPath, ApiQuery};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chorus_core::model::Attachment;
use chorus_core::{AttachmentId, ErrorCode, UserId};
use chorus_files::thumbnail::{self, ThumbnailError};
use chorus_files::{FilesError, UploadError};
use chorus_store::StoredAttachment;
use futures::TryStreamExt;
use serde::Deserialize;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

type Shared = State<Arc<AppState>>;

/// Longest attachment name, bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Longest media type kept, bytes.
const MAX_TYPE_BYTES: usize = 255;

/// The media type of an upload that names none.
const DEFAULT_TYPE: &str = "application/octet-stream";

/// Most attachments one message carries.
pub const MAX_PER_MESSAGE: usize = 10;

/// The longest an upload may go without a byte arriving before it is given up: a
/// client that trickles a body holds a connection and up to three parts of memory.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// The longest a refused upload's remaining body is read (and dropped) so that its
/// client gets the answer.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Expired uploads removed per sweep query.
const SWEEP_BATCH: i64 = 100;

/// Routes of attachments, relative to `/api/v1`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/attachments", post(upload))
        .route("/attachments/{id}", get(download))
        .route("/attachments/{id}/thumbnail", get(thumbnail))
}

/// Where an attachment's bytes are.
fn object_key(id: AttachmentId) -> String {
    format!("attachments/{id}")
}

/// Where an attachment's thumbnail is; an empty object there says it has none.
fn thumbnail_key(id: AttachmentId) -> String {
    format!("thumbnails/{id}")
}

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> Self {
        match e {
            FilesError::Config(_) => ApiError::internal(&e),
            FilesError::Store(_) => ApiError::unavailable(&e),
        }
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    name: String,
}

/// Checks an attachment's name: 1 to [`MAX_NAME_BYTES`] bytes, no path separator, no
/// control character.
fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(ApiError::bad_request(format!(
            "name must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name must not contain `/`, `\\` or control characters",
        ));
    }
    Ok(())
}

/// The media type an upload declares, or the default when it declares none (or
/// something that is not one).
fn declared_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TYPE_BYTES && t.contains('/'))
        .unwrap_or(DEFAULT_TYPE)
        .to_string()
}

/// An upload whose row exists but is not complete: removed (row and bytes) unless it
/// completes, even when the request is cut short and its future dropped.
struct Pending {
    state: Arc<AppState>,
    id: AttachmentId,
    done: bool,
}

impl Pending {
    async fn discard(mut self) {
        self.done = true;
        discard(&self.state, self.id).await;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let (state, id) = (self.state.clone(), self.id);
            tokio::spawn(async move { discard(&state, id).await });
        }
    }
}

/// Removes an upload that did not complete.
async fn discard(state: &AppState, id: AttachmentId) {
    if let Err(e) = state.files.delete(&object_key(id)).await {
        tracing::warn!(attachment_id = %id, error = %e, "removing an unfinished upload's bytes failed");
    }
    if let Err(e) = state.directory.store().remove_attachment(id).await {
        tracing::warn!(attachment_id = %id, error = %e, "removing an unfinished upload failed");
    }
}

fn quota_full(quota: u64) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("this upload would exceed your quota of {quota} bytes of stored attachments"),
    )
}

async fn upload(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut body = Box::pin(idle_bounded(body, UPLOAD_IDLE));
    let stored = store_upload(&state, me.id, q.name, &headers, &mut body).await;
    if stored.is_err() {
        // A client that is still sending reads no answer once the server closes on it:
        // it sees the connection reset. What an allowed upload could be is read and
        // dropped first (for a while at most), so that it gets the error.
        let declared = declared_length(&headers);
        let max = state.limits.max_attachment_bytes;
        if declared.is_none_or(|len| len <= max) {
            drain(&mut body, max, DRAIN_TIME).await;
        }
    }
    stored
}

/// The length the request declares, if it does.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Reads and drops what is left of a body, at most `max` bytes and for `time`.
async fn drain<S>(body: &mut S, max: u64, time: Duration)
where
    S: futures::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + time;
    let mut read = 0u64;
    while read <= max {
        match tokio::time::timeout_at(deadline, futures::StreamExt::next(body)).await {
            Ok(Some(Ok(chunk))) => read += chunk.len() as u64,
            _ => return,
        }
    }
}

/// Checks and stores an upload; the 201 answer with its Attachment.
async fn store_upload<S>(
    state: &Arc<AppState>,
    owner: UserId,
    name: String,
    headers: &HeaderMap,
    body: &mut S,
) -> Result<Response, ApiError>
where
    S: futures::Stream<Item = Result<bytes::Bytes, String>> + Unpin + Send,
{
    check_name(&name)?;
    let max = state.limits.max_attachment_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("a file may be at most {max} bytes"),
        )
    };
    let declared_len = declared_length(headers);
    if declared_len.is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let store = state.directory.store();
    let quota = state.limits.attachment_quota_bytes;
    let used = u64::try_from(store.attachment_bytes(owner).await?).unwrap_or(0);
    let room = quota.saturating_sub(used);
    if declared_len.is_some_and(|len| len > room) || room == 0 {
        return Err(quota_full(quota));
    }
    let limit = max.min(room);
    let content_type = declared_type(headers);
    let id = AttachmentId::new();
    store
        .begin_attachment(id, owner, &name, &content_type, chrono::Utc::now())
        .await?;
    let pending = Pending {
        state: state.clone(),
        id,
        done: false,
    };
    let written = match state.files.upload(&object_key(id), body, limit).await {
        Ok(written) => written,
        Err(e) => {
            pending.discard().await;
            metrics::counter!("chorus_attachment_uploads_total", "outcome" => "refused")
                .increment(1);
            return Err(match e {
                UploadError::TooLarge { .. } if limit < max => quota_full(quota),
                UploadError::TooLarge { .. } => too_large(),
                UploadError::Body(e) => {
                    ApiError::bad_request(format!("the upload was not received whole: {e}"))
                }
                UploadError::Files(e) => e.into(),
            });
        }
    };
    let size = i64::try_from(written.size).unwrap_or(i64::MAX);
    let quota_i64 = i64::try_from(quota).unwrap_or(i64::MAX);
    if !store
        .finish_attachment(id, size, &written.sha256, quota_i64)
        .await?
    {
        // Another upload of this user completed first and took the room.
        pending.discard().await;
        return Err(quota_full(quota));
    }
    let mut pending = pending;
    pending.done = true;
    metrics::counter!("chorus_attachment_uploads_total", "outcome" => "stored").increment(1);
    metrics::counter!("chorus_attachment_upload_bytes_total").increment(written.size);
    let attachment = Attachment {
        attachment_id: id,
        name,
        content_type,
        size,
        sha256: written.sha256,
    };
    Ok((StatusCode::CREATED, Json(attachment)).into_response())
}

/// A request body that ends in an error when no bytes come for `idle`.
fn idle_bounded(
    body: Body,
    idle: Duration,
) -> impl futures::Stream<Item = Result<bytes::Bytes, String>> + Send {
    futures::stream::unfold(Some(body.into_data_stream()), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout(idle, futures::StreamExt::next(&mut stream)).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(e.to_string()), None)),
            Ok(None) => None,
            Err(_) => Some((Err(format!("no bytes for {} s", idle.as_secs())), None)),
        }
    })
}

/// The attachment, if `user` may read it: `not_found` when it does not exist, is not
/// complete, or the user may not see it (which is not told apart from not existing).
async fn readable(
    state: &AppState,
    id: AttachmentId,
    user: UserId,
) -> Result<StoredAttachment, ApiError> {
    let store = state.directory.store();
    let missing = || ApiError::not_found(format!("attachment {id} does not exist"));
    let found = store
        .attachment(id)
        .await?
        .filter(|a| a.ready)
        .ok_or_else(missing)?;
    if found.owner_id == user || store.shares_attachment(id, user).await? {
        Ok(found)
    } else {
        Err(missing())
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wanted {
    /// No range (or one this server does not serve ranged: several, or malformed):
    /// the whole file.
    Whole,
    /// These bytes.
    Part(Range<u64>),
    /// A range outside the file.
    Unsatisfiable,
}

/// Reads a `Range` header: one range of bytes (`a-b`, `a-`, or the last `-n`).
fn wanted(headers: &HeaderMap, size: u64) -> Wanted {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    match (start.trim(), end.trim()) {
        ("", "") => Wanted::Whole,
        ("", last) => match number(last) {
            None => Wanted::Whole,
            Some(0) => Wanted::Unsatisfiable,
            Some(_) if size == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part(size.saturating_sub(n)..size),
        },
        (first, last) => {
            let Some(first) = number(first) else {
                return Wanted::Whole;
            };
            let last = if last.is_empty() {
                size.saturating_sub(1)
            } else {
                match number(last) {
                    Some(last) if last >= first => last.min(size.saturating_sub(1)),
                    _ => return Wanted::Whole,
                }
            };
            if first >= size {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part(first..last + 1)
            }
        }
    }
}

/// `Content-Disposition: attachment` with the name as an ASCII fallback and in full
/// (RFC 6266, RFC 5987).
fn disposition(name: &str) -> HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Headers every answer with a file's bytes carries: never sniffed, never run.
fn protect(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
}

fn etag_of(sha256: &str, suffix: &str) -> String {
    format!("\"{sha256}{suffix}\"")
}

async fn download(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<AttachmentId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let found = readable(&state, id, me.id).await?;
    let a = &found.attachment;
    let size = u64::try_from(a.size).unwrap_or(0);
    let etag = etag_of(&a.sha256, "");
    let mut response = if not_modified(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match wanted(&headers, size) {
            Wanted::Unsatisfiable => {
                let mut r = ApiError::new(
                    ErrorCode::BadRequest,
                    format!("the range is outside the file's {size} bytes"),
                )
                .into_response();
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(r);
            }
            Wanted::Whole => {
                let stream = open(&state, id, None).await?;
                let mut r = Response::new(Body::from_stream(stream));
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                r
            }
            Wanted::Part(range) => {
                let stream = open(&state, id, Some(range.clone())).await?;
                let mut r = Response::new(Body::from_stream(stream));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_LENGTH,
                    HeaderValue::from(range.end - range.start),
                );
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "bytes {}-{}/{size}",
                    range.start,
                    range.end - 1
                )) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                r
            }
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&a.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_DISPOSITION, disposition(&a.name));
    protect(h);
    Ok(response)
}

/// The bytes of an attachment (a range of them), as they come from the store.
async fn open(
    state: &AppState,
    id: AttachmentId,
    range: Option<Range<u64>>,
) -> Result<impl futures::Stream<Item = Result<bytes::Bytes, FilesError>> + use<>, ApiError> {
    let stream = state.files.read(&object_key(id), range).await?;
    let stream = stream.ok_or_else(|| {
        tracing::error!(attachment_id = %id, "an attachment's bytes are missing from the object store");
        ApiError::not_found(format!("attachment {id} does not exist"))
    })?;
    Ok(stream.inspect_err(
        move |e| tracing::warn!(attachment_id = %id, error = %e, "reading an attachment failed"),
    ))
}

async fn thumbnail(
    State(state): Shared,
    AuthUser(me): AuthUser,
    ApiPath(id): ApiPath<AttachmentId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let found = readable(&state, id, me.id).await?;
    let no_thumbnail = || ApiError::not_found(format!("attachment {id} is not an image"));
    let etag = etag_of(&found.attachment.sha256, "-thumbnail");
    let key = thumbnail_key(id);
    let bytes = match state.files.read_all(&key, thumbnail::MAX_BYTES).await? {
        Some(bytes) => bytes,
        None => make_thumbnail(&state, &found).await?,
    };
    if bytes.is_empty() {
        return Err(no_thumbnail());
    }
    let mut response = if not_modified(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let content_type = thumbnail::content_type(&bytes);
        let mut r = Response::new(Body::from(bytes));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    protect(h);
    Ok(response)
}

/// Makes an attachment's thumbnail and keeps it in the store; an empty one when the
/// file is not an image it can read, so that it is decoded once, not at every request.
async fn make_thumbnail(
    state: &AppState,
    found: &StoredAttachment,
) -> Result<bytes::Bytes, ApiError> {
    let id = found.attachment.attachment_id;
    let max = u64::try_from(found.attachment.size).unwrap_or(0);
    // Decoding is CPU-bound and, for a big picture, long and large: a few at a time
    // (the original is read under the permit too), off the async threads.
    let permit = state
        .thumbnails
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let Some(original) = state.files.read_all(&object_key(id), max).await? else {
        return Err(ApiError::not_found(format!(
            "attachment {id} does not exist"
        )));
    };
    let started = std::time::Instant::now();
    let made = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        thumbnail::make(&original)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    metrics::histogram!("chorus_thumbnail_seconds").record(started.elapsed().as_secs_f64());
    let bytes = match made {
        Ok(t) => bytes::Bytes::from(t.bytes),
        Err(ThumbnailError::NotAnImage) => bytes::Bytes::new(),
        Err(e @ ThumbnailError::Decode(_)) => {
            tracing::info!(attachment_id = %id, error = %e, "no thumbnail for an attachment");
            bytes::Bytes::new()
        }
    };
    state.files.put(&thumbnail_key(id), bytes.clone()).await?;
    Ok(bytes)
}

/// Removes, every `every`, uploads older than `grace` that no message carries (and
/// uploads cut short by a crash), and reports what is stored; until `stop`.
pub async fn sweep_forever(
    state: Arc<AppState>,
    every: Duration,
    grace: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let before =
            chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        match sweep(&state, before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired uploads removed"),
            Err(e) => tracing::warn!(error = %e.message, "sweeping expired uploads failed"),
        }
    }
}

/// Removes the uploads begun before `before` that no message carries; how many.
pub async fn sweep(
    state: &AppState,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<usize, ApiError> {
    let store = state.directory.store();
    let mut removed = 0;
    loop {
        let expired = store.expired_attachments(before, SWEEP_BATCH).await?;
        let mut progress = false;
        for id in &expired {
            // The row goes first, and only if no message carries the file: a message
            // sent at the last moment keeps it.
            if store.remove_attachment(*id).await? {
                state.files.delete(&object_key(*id)).await?;
                state.files.delete(&thumbnail_key(*id)).await?;
                removed += 1;
                progress = true;
            }
        }
        if (expired.len() as i64) < SWEEP_BATCH || !progress {
            break;
        }
    }
    let (objects, bytes) = store.attachment_totals().await?;
    metrics::gauge!("chorus_attachments_stored_objects").set(objects as f64);
    metrics::gauge!("chorus_attachments_stored_bytes").set(bytes as f64);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(wanted(&HeaderMap::new(), 100), Wanted::Whole);
        assert_eq!(wanted(&range("bytes=0-9"), 100), Wanted::Part(0..10));
        assert_eq!(wanted(&range("bytes=90-"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(&range("bytes=-10"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(&range("bytes=-1000"), 100), Wanted::Part(0..100));
        assert_eq!(wanted(&range("bytes=50-1000"), 100), Wanted::Part(50..100));
        assert_eq!(wanted(&range("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(&range("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(&range("bytes=0-0"), 0), Wanted::Unsatisfiable);
        // Not served as ranges: the whole file.
        assert_eq!(wanted(&range("bytes=0-1,5-6"), 100), Wanted::Whole);
        assert_eq!(wanted(&range("bytes=9-1"), 100), Wanted::Whole);
        assert_eq!(wanted(&range("items=0-1"), 100), Wanted::Whole);
        assert_eq!(wanted(&range("bytes=x-1"), 100), Wanted::Whole);
    }

    #[test]
    fn names_are_escaped_for_content_disposition() {
        assert_eq!(
            disposition("report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            disposition("a \"b\"\\c;d.txt"),
            "attachment; filename=\"a _b__c;d.txt\"; filename*=UTF-8''a%20%22b%22%5Cc%3Bd.txt"
        );
        assert_eq!(
            disposition("Grüße.png"),
            "attachment; filename=\"Gr__e.png\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe.png"
        );
    }

    #[test]
    fn names_without_separators_or_control_characters_are_accepted() {
        assert!(check_name("photo 1.jpg").is_ok());
        assert!(check_name("Grüße.txt").is_ok());
        for bad in ["", "a/b", "a\\b", "a\nb", "a\u{7f}", &"x".repeat(256)] {
            assert_eq!(
                check_name(bad).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_upload_that_stops_sending_ends_in_an_error() {
        use futures::StreamExt;
        let trickle =
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"a"))])
                .chain(futures::stream::pending());
        let body = Body::from_stream(trickle);
        let got: Vec<_> = idle_bounded(body, Duration::from_millis(20))
            .collect()
            .await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].as_deref().unwrap(), b"a");
        assert!(got[1].as_ref().unwrap_err().contains("no bytes"), "{got:?}");
    }

    #[test]
    fn if_none_match_matches_the_etag_in_a_list_or_star() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", \"abc\""),
        );
        assert!(not_modified(&h, "\"abc\""));
        assert!(!not_modified(&h, "\"abd\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, "\"abc\""));
        assert!(!not_modified(&HeaderMap::new(), "\"abc\""));
    }
}
