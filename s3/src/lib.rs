//! `s3`: the engine's [`Driver`] contract over a real S3 API, through
//! `object_store`'s `AmazonS3` (DESIGN §14).
//!
//! A crate of its own because `object_store` speaks HTTP through reqwest on
//! real tokio: the engine is also built under `--cfg madsim` (madsim-tokio
//! replaces tokio) and `--cfg loom` (no tokio at all), and neither build may
//! see a network client. The simulator and loom never build this crate; the
//! CLI, the server, the engine's tests and the benches do.
//!
//! Semantics are the `object` driver's (`engine::driver::object`), which
//! emulates exactly this backend: no links, no rename, no directories, a
//! move is copy + delete, every call durable on return. How each call maps:
//!
//! | driver call | S3 request(s) |
//! |---|---|
//! | `stat` | HEAD |
//! | `get` | GET (ranged: `Range:`; an empty range costs a HEAD instead) |
//! | `put` / small `writer` | one PUT; `IfAbsent` sends `If-None-Match: *` |
//! | large `writer` | parts staged as objects, assembled by a server-side multipart copy at the commit (see [`writer`]) |
//! | `checkpoint` / `resume_writer` | PUT of the new tail bytes / LIST + GETs of the record and tail (see [`writer`]) |
//! | `list` / `list_dir` | ListObjectsV2 pages (with `/` delimiter for `list_dir`) |
//! | `get_versioned` | GET (the ETag of the same response is the version) |
//! | `put_if_version` | PUT with `If-Match: <ETag>`, or `If-None-Match: *` for "absent" |
//! | `delete` | DELETE (idempotent on S3 too) |
//! | `copy` | CopyObject; `IfAbsent` is a one-part multipart copy completed with `If-None-Match: *`, since S3 servers ignore conditions on CopyObject |
//!
//! Keys are `<prefix>/<driver path>`; names starting with `.ocistore` are
//! the driver's own (writers' staged bytes, see [`writer`]) and never listed.
//!
//! Call counters ([`engine::driver::Instrumented`]) count driver calls, one
//! per call whatever it costs here; the S3 requests behind each are in the
//! table above and, for writers, in [`writer`]'s docs.

mod raw;
mod writer;

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use engine::driver::{
    BlobWriter, Capabilities, Checkpoint, Driver, DriverError, DriverPath, DriverResult, Leftover,
    Listing, ObjectMeta, ObjectVersion, PutMode, RESERVED_PREFIX,
};
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut, S3CopyIfNotExists};
use object_store::client::HttpClient;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};

pub use writer::PART_SIZE;

/// Where the store lives and who we are there.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3 API; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix below which the store lives (no leading or trailing `/`).
    pub prefix: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `bucket.host` addressing instead of `host/bucket`.
    pub virtual_hosted: bool,
    /// How long another process's writer may go without storing anything
    /// before [`Driver::leftovers`] calls it gone.
    pub writer_stale_after: Duration,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs and panics.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("virtual_hosted", &self.virtual_hosted)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// A bucket on a server at `endpoint` (moto, MinIO) with the given keys.
    pub fn new(endpoint: Option<String>, bucket: impl Into<String>) -> S3Config {
        S3Config {
            endpoint,
            bucket: bucket.into(),
            prefix: None,
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            session_token: None,
            virtual_hosted: false,
            writer_stale_after: Duration::from_secs(3600),
        }
    }
}

/// The `s3` driver.
#[derive(Clone)]
pub struct S3Driver {
    inner: Arc<Shared>,
}

struct Shared {
    store: AmazonS3,
    /// `"<prefix>/"` or empty.
    key_prefix: String,
    config: S3Config,
    writers: writer::LiveWriters,
    /// For the requests `store` does not expose ([`raw`]).
    http: HttpClient,
}

impl fmt::Debug for S3Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Driver")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl S3Driver {
    /// A client for `config`. Makes no request: a wrong endpoint or bucket
    /// shows on the first call.
    pub fn open(config: S3Config) -> DriverResult<S3Driver> {
        if let Some(prefix) = &config.prefix {
            // The prefix obeys the path grammar, so keys stay unambiguous.
            DriverPath::new(prefix)?;
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            // Explicit keys: without them the client probes a cloud
            // metadata address for credentials (DESIGN §14).
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .with_virtual_hosted_style_request(config.virtual_hosted)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            })
            .with_client_options(client_options(&config));
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder
            .build()
            .map_err(|e| error("open", &config.bucket, e))?;
        let http =
            raw::client(&client_options(&config)).map_err(|e| error("open", &config.bucket, e))?;
        let key_prefix = config
            .prefix
            .as_ref()
            .map_or(String::new(), |p| format!("{p}/"));
        Ok(S3Driver {
            inner: Arc::new(Shared {
                store,
                key_prefix,
                config,
                writers: writer::LiveWriters::default(),
                http,
            }),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.inner.config
    }

    /// Every key below the prefix, the driver's own (reserved) ones
    /// included, sorted: what the store really holds in the bucket.
    pub async fn all_keys(&self) -> DriverResult<Vec<String>> {
        let metas: Vec<_> = self
            .inner
            .store
            .list(self.inner.list_prefix(None).as_ref())
            .try_collect()
            .await
            .map_err(|e| error("list", "", e))?;
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        Ok(keys)
    }

    /// The keys below the prefix with a multipart upload in progress
    /// (`ListMultipartUploads`, which `object_store` does not offer):
    /// uploads are stored and billed but never listed as objects.
    pub async fn multipart_uploads(&self) -> DriverResult<Vec<String>> {
        let uploads = self
            .inner
            .uploads_in_progress(&self.inner.key_prefix)
            .await?;
        Ok(uploads
            .into_iter()
            .map(|(key, _)| key.to_string())
            .collect())
    }

    /// A URL that lets its holder GET `path` for `expires_in`, without
    /// credentials (redirected pulls, DESIGN §13).
    pub async fn presigned_get(
        &self,
        path: &DriverPath,
        expires_in: Duration,
    ) -> DriverResult<String> {
        let url = self
            .inner
            .store
            .signed_url(http::Method::GET, &self.inner.object(path), expires_in)
            .await
            .map_err(|e| map_error("presign", path, e))?;
        Ok(url.to_string())
    }
}

impl Shared {
    fn object(&self, path: &DriverPath) -> Path {
        Path::from(format!("{}{path}", self.key_prefix))
    }

    /// HEAD: the object's size, time and ETag.
    async fn head(&self, path: &DriverPath) -> DriverResult<object_store::ObjectMeta> {
        self.store
            .head(&self.object(path))
            .await
            .map_err(|e| map_error("stat", path, e))
    }

    /// The listing prefix for `prefix` (`None`: the whole store).
    fn list_prefix(&self, prefix: Option<&DriverPath>) -> Option<Path> {
        match prefix {
            Some(p) => Some(self.object(p)),
            None if self.key_prefix.is_empty() => None,
            None => Some(Path::from(self.key_prefix.trim_end_matches('/'))),
        }
    }

    /// The driver path of a listed key, `None` for the driver's own names.
    fn driver_path(&self, key: &Path) -> Option<DriverPath> {
        let rel = key.as_ref().strip_prefix(&self.key_prefix)?;
        DriverPath::new(rel).ok()
    }
}

/// An `object_store` error as the contract's: missing and conditional
/// failures keep their meaning, the rest is I/O naming the call.
fn map_error(op: &'static str, path: &DriverPath, e: object_store::Error) -> DriverError {
    match e {
        object_store::Error::NotFound { .. } => DriverError::NotFound { path: path.clone() },
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            DriverError::AlreadyExists { path: path.clone() }
        }
        e => error(op, path.as_str(), e),
    }
}

fn error(op: &'static str, path: &str, e: object_store::Error) -> DriverError {
    DriverError::Io {
        driver: "s3",
        op,
        path: path.to_owned(),
        source: io::Error::other(e),
    }
}

/// A compare-and-swap needs the ETag; a server that sends none cannot
/// offer one.
fn no_etag(op: &'static str, path: &DriverPath) -> DriverError {
    DriverError::Io {
        driver: "s3",
        op,
        path: path.to_string(),
        source: io::Error::other("the server sent no ETag"),
    }
}

fn system_time(t: object_store::ObjectMeta) -> SystemTime {
    SystemTime::from(t.last_modified)
}

#[async_trait]
impl Driver for S3Driver {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::OBJECT_STORE
    }

    async fn stat(&self, path: &DriverPath) -> DriverResult<ObjectMeta> {
        let meta = self.inner.head(path).await?;
        Ok(ObjectMeta {
            size: meta.size,
            modified: system_time(meta),
            links: None,
            file_id: None,
        })
    }

    async fn get(&self, path: &DriverPath, range: Option<Range<u64>>) -> DriverResult<Bytes> {
        let key = self.inner.object(path);
        let invalid = |size| {
            let r = range.clone().unwrap_or_default();
            DriverError::InvalidRange {
                path: path.clone(),
                start: r.start,
                end: r.end,
                size,
            }
        };
        let get_range = match &range {
            // S3 has no empty ranges: the size alone decides.
            Some(r) if r.start >= r.end => {
                let size = self.stat(path).await?.size;
                return match r.start == r.end && r.end <= size {
                    true => Ok(Bytes::new()),
                    false => Err(invalid(size)),
                };
            }
            Some(r) => Some(GetRange::Bounded(r.clone())),
            None => None,
        };
        let opts = GetOptions {
            range: get_range,
            ..GetOptions::default()
        };
        match self.inner.store.get_opts(&key, opts).await {
            Ok(result) => {
                let size = result.meta.size;
                if range.as_ref().is_some_and(|r| r.end > size) {
                    return Err(invalid(size));
                }
                result.bytes().await.map_err(|e| map_error("get", path, e))
            }
            Err(object_store::Error::NotFound { .. }) => {
                Err(DriverError::NotFound { path: path.clone() })
            }
            // A range past the end is refused by the server (416) or by
            // the client's check of the answer: the size says which.
            Err(e) if range.is_some() => match self.stat(path).await {
                Ok(meta) if range.as_ref().is_some_and(|r| r.end > meta.size) => {
                    Err(invalid(meta.size))
                }
                Ok(_) => Err(map_error("get", path, e)),
                Err(stat) => Err(stat),
            },
            Err(e) => Err(map_error("get", path, e)),
        }
    }

    async fn writer(&self, path: &DriverPath, mode: PutMode) -> DriverResult<Box<dyn BlobWriter>> {
        Ok(Box::new(writer::S3Writer::new(
            self.inner.clone(),
            path.clone(),
            mode,
        )))
    }

    async fn resume_writer(
        &self,
        path: &DriverPath,
        mode: PutMode,
        checkpoint: &Checkpoint,
    ) -> DriverResult<Box<dyn BlobWriter>> {
        let writer =
            writer::S3Writer::resume(self.inner.clone(), path.clone(), mode, checkpoint).await?;
        Ok(Box::new(writer))
    }

    async fn put(&self, path: &DriverPath, data: Bytes, mode: PutMode) -> DriverResult<()> {
        self.inner
            .put_whole(path, PutPayload::from_bytes(data), mode)
            .await
    }

    async fn list(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<DriverPath>> {
        let op_path = prefix.map_or(String::new(), |p| p.to_string());
        let metas: Vec<_> = self
            .inner
            .store
            .list(self.inner.list_prefix(prefix).as_ref())
            .try_collect()
            .await
            .map_err(|e| error("list", &op_path, e))?;
        let mut out: Vec<DriverPath> = metas
            .iter()
            .filter_map(|m| self.inner.driver_path(&m.location))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn list_dir(&self, prefix: Option<&DriverPath>) -> DriverResult<Listing> {
        let op_path = prefix.map_or(String::new(), |p| p.to_string());
        let result = self
            .inner
            .store
            .list_with_delimiter(self.inner.list_prefix(prefix).as_ref())
            .await
            .map_err(|e| error("list", &op_path, e))?;
        let name = |key: &Path| {
            let name = key.filename().unwrap_or_default().to_owned();
            (!name.starts_with(RESERVED_PREFIX)).then_some(name)
        };
        let mut listing = Listing {
            dirs: result.common_prefixes.iter().filter_map(name).collect(),
            files: result
                .objects
                .iter()
                .filter_map(|m| name(&m.location))
                .collect(),
        };
        listing.dirs.sort();
        listing.files.sort();
        Ok(listing)
    }

    async fn delete(&self, path: &DriverPath) -> DriverResult<()> {
        match self.inner.store.delete(&self.inner.object(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_error("delete", path, e)),
        }
    }

    async fn copy(&self, src: &DriverPath, dst: &DriverPath, mode: PutMode) -> DriverResult<()> {
        let (from, to) = (self.inner.object(src), self.inner.object(dst));
        let result = match mode {
            PutMode::Overwrite => self.inner.store.copy(&from, &to).await,
            PutMode::IfAbsent => self.inner.store.copy_if_not_exists(&from, &to).await,
        };
        match result {
            Ok(()) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(DriverError::AlreadyExists { path: dst.clone() })
            }
            // A missing source: the copy's error names the target, so ask.
            Err(e) => match self.stat(src).await {
                Err(missing) if missing.is_not_found() => Err(missing),
                _ => Err(map_error("copy", dst, e)),
            },
        }
    }

    async fn sync_dir(&self, _dir: Option<&DriverPath>) -> DriverResult<()> {
        Ok(())
    }

    /// One GET: the bytes and the ETag of the same response.
    async fn get_versioned(&self, path: &DriverPath) -> DriverResult<(Bytes, ObjectVersion)> {
        let result = self
            .inner
            .store
            .get(&self.inner.object(path))
            .await
            .map_err(|e| map_error("get", path, e))?;
        let etag = result
            .meta
            .e_tag
            .clone()
            .ok_or_else(|| no_etag("get", path))?;
        let data = result
            .bytes()
            .await
            .map_err(|e| map_error("get", path, e))?;
        Ok((data, ObjectVersion::from_etag(etag)))
    }

    /// One PUT with `If-Match: <ETag>`, or `If-None-Match: *` when the
    /// object must be absent: S3 checks the condition and writes
    /// atomically (its documented conditional writes; DESIGN §14).
    async fn put_if_version(
        &self,
        path: &DriverPath,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> DriverResult<ObjectVersion> {
        let mode = match expected {
            None => object_store::PutMode::Create,
            Some(version) => object_store::PutMode::Update(UpdateVersion {
                e_tag: Some(version.as_str().to_owned()),
                version: None,
            }),
        };
        let result = self
            .inner
            .store
            .put_opts(
                &self.inner.object(path),
                PutPayload::from_bytes(data),
                PutOptions::from(mode),
            )
            .await;
        match result {
            Ok(r) => Ok(ObjectVersion::from_etag(
                r.e_tag.ok_or_else(|| no_etag("put", path))?,
            )),
            // 412 on a version that is not the current one (or an object
            // that exists, for a create); an `If-Match` on a missing key
            // is a 404 on some servers: not the expected version either.
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            ) => Err(DriverError::PreconditionFailed { path: path.clone() }),
            Err(e) => Err(map_error("put", path, e)),
        }
    }

    async fn leftovers(&self, prefix: Option<&DriverPath>) -> DriverResult<Vec<Leftover>> {
        self.inner.leftovers(prefix).await
    }

    async fn remove_leftover(&self, leftover: &Leftover) -> DriverResult<()> {
        self.inner.remove_leftover(leftover).await
    }
}

impl Shared {
    /// One PUT of a whole object; `IfAbsent` is `If-None-Match: *`.
    async fn put_whole(
        &self,
        path: &DriverPath,
        payload: PutPayload,
        mode: PutMode,
    ) -> DriverResult<()> {
        let opts = PutOptions::from(match mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::IfAbsent => object_store::PutMode::Create,
        });
        self.store
            .put_opts(&self.object(path), payload, opts)
            .await
            .map(drop)
            .map_err(|e| map_error("put", path, e))
    }
}

/// The HTTP client's options, for the store and for [`raw`]'s requests.
fn client_options(config: &S3Config) -> ClientOptions {
    ClientOptions::new()
        .with_timeout(Duration::from_secs(120))
        .with_allow_http(
            config
                .endpoint
                .as_ref()
                .is_some_and(|e| e.starts_with("http://")),
        )
}

impl S3Config {
    /// A bucket on a local test server (moto) with its test credentials;
    /// writers of other processes count as gone at once, so crash tests
    /// see their leftovers without waiting.
    pub fn for_test_server(endpoint: String, bucket: String) -> S3Config {
        S3Config {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            writer_stale_after: Duration::ZERO,
            ..S3Config::new(Some(endpoint), bucket)
        }
    }
}
