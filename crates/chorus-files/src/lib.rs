//! The bytes of attachments, in an object store: a directory under the data directory
//! when embedded, any S3-compatible bucket (or GCS, or Azure) when distributed, behind
//! one API ([`object_store::ObjectStore`]). What is known of a file (its name, owner,
//! size, digest, who may read it) is in the database, not here.
//!
//! - [`Files::upload`] streams a body into the store: never more than one part
//!   ([`PART_BYTES`]) in memory, the size limit enforced while reading, the SHA-256
//!   computed on the way; on any failure nothing is left behind.
//! - [`Files::read`] streams an object or a byte range of it back.
//! - [`thumbnail`] makes the small picture of an image, with decoder limits.

pub mod thumbnail;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, PutPayload, WriteMultipart,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// Bytes gathered before they are written: a whole small file, or one part of a
/// multipart upload (S3's smallest part is 5 MiB).
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// Parts of one upload written at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Errors of the object store.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The store's URL or options are not usable.
    #[error("object store configuration: {0}")]
    Config(String),
    /// The store failed or could not be reached.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Why an upload did not complete. Nothing of it is left in the store.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body is longer than the limit given.
    #[error("the file is larger than {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: u64,
    },
    /// The body could not be read (the client went away).
    #[error("reading the upload: {0}")]
    Body(String),
    /// The store failed.
    #[error(transparent)]
    Files(#[from] FilesError),
}

impl From<object_store::Error> for UploadError {
    fn from(e: object_store::Error) -> Self {
        Self::Files(e.into())
    }
}

/// What an upload wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// An object being read: its bytes as they come.
pub type ByteStream = futures::stream::BoxStream<'static, Result<Bytes, FilesError>>;

/// The object store of a node.
#[derive(Clone)]
pub struct Files {
    store: Arc<dyn ObjectStore>,
    location: String,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("location", &self.location)
            .finish()
    }
}

impl Files {
    /// A directory of the local file system (created if missing).
    pub fn local(dir: &Path) -> Result<Self, FilesError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| FilesError::Config(format!("cannot create {}: {e}", dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            location: dir.display().to_string(),
        })
    }

    /// The store a URL names: `s3://BUCKET[/PREFIX]`, `gs://BUCKET`, `az://CONTAINER`,
    /// or `file:///DIR`. Credentials and settings come from the provider's usual
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, …), then from
    /// `options`, whose keys are the provider's configuration keys (`aws_endpoint`,
    /// `aws_region`, `aws_allow_http`, `aws_virtual_hosted_style_request`,
    /// `google_service_account`, `azure_storage_account_name`, …).
    pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Self, FilesError> {
        let bad = |e: object_store::Error| FilesError::Config(e.to_string());
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| FilesError::Config(format!("{url:?} is not a URL")))?;
        let store: Arc<dyn ObjectStore> = match scheme {
            "file" => return Self::local(Path::new(rest)),
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.parse().map_err(bad)?, v);
                }
                Arc::new(b.build().map_err(bad)?)
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.parse().map_err(bad)?, v);
                }
                Arc::new(b.build().map_err(bad)?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
                for (k, v) in options {
                    b = b.with_config(k.parse().map_err(bad)?, v);
                }
                Arc::new(b.build().map_err(bad)?)
            }
            other => {
                return Err(FilesError::Config(format!(
                    "unknown object store scheme {other:?} (file, s3, gs or az)"
                )));
            }
        };
        // The builders take the bucket from the URL, not the path after it.
        let prefix = rest
            .split_once('/')
            .map_or("", |(_, p)| p.trim_matches('/'));
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(Self {
            store,
            location: url.to_string(),
        })
    }

    /// Where the files are, for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Writes `body` under `key`, refusing more than `limit` bytes, and returns its
    /// size and digest. The bytes are written in parts of [`PART_BYTES`] as they come;
    /// a body that fits in one part is written with one request. If the body is too
    /// long, cannot be read, or the store fails, or the future is dropped part way,
    /// nothing is kept under `key`.
    pub async fn upload<S, E>(&self, key: &str, body: S, limit: u64) -> Result<Written, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let key = Key::from(key);
        let mut body = std::pin::pin!(body);
        let mut hash = Sha256::new();
        let mut size: u64 = 0;
        let mut first = BytesMut::new();
        let mut multipart: Option<Multipart> = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    abort(multipart).await;
                    return Err(UploadError::Body(e.to_string()));
                }
            };
            size += chunk.len() as u64;
            if size > limit {
                abort(multipart).await;
                return Err(UploadError::TooLarge { limit });
            }
            hash.update(&chunk);
            match &mut multipart {
                Some(m) => {
                    if let Err(e) = m.write(chunk).await {
                        abort(multipart).await;
                        return Err(e.into());
                    }
                }
                None => {
                    first.extend_from_slice(&chunk);
                    if first.len() >= PART_BYTES {
                        let upload = self.store.put_multipart(&key).await?;
                        let mut m = Multipart::new(key.clone(), upload);
                        let result = m.write(std::mem::take(&mut first).freeze()).await;
                        multipart = Some(m);
                        if let Err(e) = result {
                            abort(multipart).await;
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        match multipart {
            Some(m) => m.finish().await?,
            None => {
                self.store
                    .put(&key, PutPayload::from_bytes(first.freeze()))
                    .await?;
            }
        }
        Ok(Written {
            size,
            sha256: hex(&hash.finalize()),
        })
    }

    /// Writes a small object in one request.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), FilesError> {
        self.store
            .put(&Key::from(key), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// The bytes of `key` in `range` (all of them without one), as they come; `None`
    /// when there is no such object.
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, FilesError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&Key::from(key), options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(match got.payload {
            // A local file: read in large pieces (object_store's own stream reads 8 KiB
            // at a time, each on a blocking thread: a twentieth of the disk's speed).
            GetResultPayload::File(file, _) => {
                file_stream(tokio::fs::File::from_std(file), got.range).await?
            }
            GetResultPayload::Stream(stream) => stream.map_err(FilesError::from).boxed(),
        }))
    }

    /// The whole of a small object, or `None` when there is no such object or it is
    /// longer than `max` bytes.
    pub async fn read_all(&self, key: &str, max: u64) -> Result<Option<Bytes>, FilesError> {
        match self.store.get(&Key::from(key)).await {
            Ok(got) if got.meta.size > max => Ok(None),
            Ok(got) => Ok(Some(got.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes `key`; removing what is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), FilesError> {
        match self.store.delete(&Key::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the store answers: it lists one key.
    pub async fn health(&self) -> Result<(), FilesError> {
        let mut listing = self.store.list(None);
        match listing.next().await {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// Bytes read from a local file at a time.
const FILE_CHUNK: usize = 256 * 1024;

/// The bytes of `range` of a local file, in pieces of [`FILE_CHUNK`].
async fn file_stream(
    mut file: tokio::fs::File,
    range: Range<u64>,
) -> Result<ByteStream, FilesError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let io = |e: std::io::Error| {
        FilesError::Store(object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        })
    };
    file.seek(std::io::SeekFrom::Start(range.start))
        .await
        .map_err(io)?;
    let reader = file.take(range.end - range.start);
    Ok(
        tokio_util::io::ReaderStream::with_capacity(reader, FILE_CHUNK)
            .map_err(io)
            .boxed(),
    )
}

/// A multipart upload under way; aborted when dropped before it finishes, so that a
/// request cut short (the client went away and the handler's future was dropped)
/// leaves no parts behind.
struct Multipart {
    write: Option<WriteMultipart>,
    key: Key,
}

impl Multipart {
    fn new(key: Key, upload: Box<dyn object_store::MultipartUpload>) -> Self {
        Self {
            write: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            key,
        }
    }

    async fn write(&mut self, bytes: Bytes) -> object_store::Result<()> {
        let write = self.write.as_mut().expect("written only before it ends");
        write.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        write.put(bytes);
        Ok(())
    }

    async fn finish(mut self) -> object_store::Result<()> {
        let write = self.write.take().expect("finished once");
        write.finish().await?;
        Ok(())
    }

    async fn abort(mut self) {
        if let Some(write) = self.write.take() {
            abort_quietly(write, &self.key).await;
        }
    }
}

/// Aborts a multipart upload once its parts in flight have ended: a part still being
/// written when the abort lands can outlive it on some stores (S3 among them).
async fn abort_quietly(mut write: WriteMultipart, key: &Key) {
    // A part that failed is as good as ended here.
    let _ = write.wait_for_capacity(0).await;
    if let Err(e) = write.abort().await {
        tracing::warn!(%key, error = %e, "aborting an upload failed");
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if let Some(write) = self.write.take() {
            let key = self.key.clone();
            // Dropped part way (the request was cut short): abort in the background.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { abort_quietly(write, &key).await });
            }
        }
    }
}

async fn abort(multipart: Option<Multipart>) {
    if let Some(m) = multipart {
        m.abort().await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
